"""One-off measurement scripts: the GPU check and the figures behind the tables of docs/.

Why here: they measure tsf-trt rather than being part of it, so this folder is not installed
(pyproject.toml packages `tsf_trt` and its mapped folders only), and `tsf-trt bench` and the
library never import it. Run them from a checkout's root after `pip install -e .` (the editable
install is what makes `tsf_trt.engines`, `.export` and `.bench` importable: pyproject.toml maps
them from engines/, export/ and bench/), as modules:

    python -m scripts.gpu_check --dry-run --out /tmp/gpu-check   # the first GPU's check, on the CPU
    python -m scripts.gpu_check --device-command                 # the GPU machine's one call: installs
                                                                 # the checkout and wheels offline, runs it
    python -m scripts.frame_speed --rounds 3 --slices 40         # docs/performance.md
    python -m scripts.skullstrip_check                           # docs/your-data.md, "Preparing your data"

As modules because gpu_check runs TensorRT's stand-in from tests/fake_trt.py, which only the
checkout's root puts on the import path (this file makes `scripts` a package found there).
"""
