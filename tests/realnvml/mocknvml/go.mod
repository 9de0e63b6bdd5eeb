// Pins the NVML header that fatia's mock libnvidia-ml (mocknvml.c) is compiled
// against: the nvml.h that NVIDIA's go-nvml module ships. No Go code is built.
module fatia.dev/tests/realnvml/mocknvml

go 1.22

require github.com/NVIDIA/go-nvml v0.13.4-1
