"""Device health: NVML events and liveness in, unhealthy devices out, with recovery."""
