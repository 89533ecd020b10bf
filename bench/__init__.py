"""Benchmarks: glammp against direct use of the same backend, in the same run (`make bench`)."""
