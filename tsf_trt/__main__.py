"""`python -m tsf_trt` is the `tsf-trt` command."""

from tsf_trt.cli import main

main()
