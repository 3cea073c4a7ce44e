"""Throughput benchmarks: model-only and end-to-end images/s (`modnet-batch bench`)."""
