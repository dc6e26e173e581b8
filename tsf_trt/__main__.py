"""`python -m tsf_trt` is the `tsf-trt` command."""

from .cli import main

main()
