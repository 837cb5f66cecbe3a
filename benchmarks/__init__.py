"""Turnout benchmark suite: model builder, load generator, perf_analyzer wrapper, raw onnxruntime
limit, CPU accounting and the orchestrator ``python -m benchmarks.run`` (see README.md)."""
