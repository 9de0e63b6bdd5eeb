"""The simulated NVML: a pynvml-shaped view over a node state kept in a file, with fault injection."""
