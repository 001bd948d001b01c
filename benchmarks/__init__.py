"""Side-by-side throughput benchmarks: ``python -m benchmarks.run --quick``."""
