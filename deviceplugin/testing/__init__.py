"""Counterparts for tests, the demo and benchmarks: the kubelet emulator and the fake API server.

Only tests, ``fatia demo`` and ``bench/`` import this package."""
