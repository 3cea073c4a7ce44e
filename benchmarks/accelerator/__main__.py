"""`python -m benchmarks.accelerator`: see the package's docstring."""

from benchmarks.accelerator.run import main

main()
