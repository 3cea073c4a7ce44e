"""The lab: Makefile-driven benchmark scripts (`make bench-*`, `profile`, `device-kit`), run from
the repository root as `python -m benchmarks.NAME`; not part of the installed package."""
