"""Generated gRPC code for the kubelet's device-plugin and PodResources APIs.

Do not edit the ``*_pb2*`` files: change ``proto/`` and run ``make proto``.
"""
