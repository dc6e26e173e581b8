"""Latency / throughput benchmarks.

`tsf-trt bench` is :mod:`.runner` (what is measured) + :mod:`.report` (table, JSON,
Markdown, PNG; schema in bench/SCHEMA.md), over :mod:`.variants` (what each row runs, and
its agreement with torch fp32), :mod:`.workload` (the subject and its FLOPs),
:mod:`.environment` (machine, GEMM rate, memory) and :mod:`.stats`.
`tsf-trt bench suite` (:mod:`.suite`) turns the same measurements into the whole-slice
tables of docs/performance.md.
"""
