"""Kubernetes side of fatia: the CLI, the agent, the config schema, the kubelet's
gRPC servers and allocation policy, PodResources, the Kubernetes API, health,
metrics and the kubelet emulator used by the demo and the tests."""
