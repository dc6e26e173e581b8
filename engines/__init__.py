"""TensorRT engines for the exported graphs, and the CUDA plumbing that runs them.

    precision.py  which graphs are FP16, which operators stay FP32 in them
    fp16.py       the FP16 variant of an ONNX graph (strongly typed builds, TensorRT 10 and 11)
    profiles.py   optimisation profiles (batch, slice size) -> per-input shapes
    keys.py       what identifies an engine (graph hash, TensorRT, GPU, precision, profile)
    engine_cache.py  engines + metadata beside the export; stale, foreign or damaged ones never load
    manager.py    find or build the engine of a graph (on demand, or `tsf-trt engines build`)
    build.py      the TensorRT builder (timing cache, workspace, progress)
    runtime.py    deserialised engines and execution contexts
    cuda.py       every buffer, stream, event and copy (cuda-python)
    gpu.py        lazy imports of the GPU packages, GPU discovery, clean errors

Nothing here imports a GPU package at import time. The pure-Python parts (precision,
fp16, profiles, keys, engine_cache, manager) are tested on CPU; build.py, runtime.py and
cuda.py are written from NVIDIA's documentation and have NOT run on a GPU yet
(docs/gpu.md).
"""
