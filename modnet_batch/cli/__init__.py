"""The `modnet-batch` command line: one small module per command group (model, data, jobs,
report, bench); each command parses its options, builds a config and calls one library
function, and prints a library error as one line with exit status 1."""

from modnet_batch.cli.app import app, main

__all__ = ["app", "main"]
