"""GPU side of fatia: the NVML seam, the simulated NVML, the MIG catalog, layout
types, the placement planner and the reconciler. Knows nothing of Kubernetes."""
