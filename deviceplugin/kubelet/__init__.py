"""Everything that speaks the kubelet's gRPC APIs.

The plugin servers and their manager, the allocation policy, and the PodResources client.
"""
