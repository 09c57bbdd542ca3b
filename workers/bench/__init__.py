"""Benchmarks on the compute side: model speeds (``models``), audit cost (``audit``), the job path (``path``)."""
