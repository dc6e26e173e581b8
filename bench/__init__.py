"""Latency / throughput benchmarks: arrives with the bench issue."""
