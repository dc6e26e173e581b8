"""The machine a run is on: what its CPU can do natively (cpu), where tsf-trt keeps what it derives once
(cache_dir), and which optional packages are installed (extras). The ground floor: it imports no other layer.
"""
