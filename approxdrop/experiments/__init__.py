"""Experiments: the benchmarks, the accuracy study and GEMM timing, and the ``approxdrop`` command
(``cli``) that runs them. Nothing is imported here: each module is its own entry point."""
