"""Latency / throughput benchmarks.

`tsf-trt bench` is :mod:`.runner` (what is measured) + :mod:`.report` (table, JSON,
Markdown, PNG; schema in bench/SCHEMA.md), over :mod:`.workload` (the subject and its
FLOPs), :mod:`.environment` (machine, GEMM rate, memory) and :mod:`.stats`.
`python -m tsf_trt.bench.suite` regenerates the README's performance table from
:mod:`.backends`.
"""
