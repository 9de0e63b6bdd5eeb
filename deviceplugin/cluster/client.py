"""A Kubernetes API client from ``--kubeconfig`` or the pod's service account."""

from __future__ import annotations

from kubernetes import client, config


def api_client(kubeconfig: str | None) -> client.ApiClient:
    """A client from ``--kubeconfig``, or the in-cluster service account."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    configuration.retries = 1  # fatia retries itself, with backoff
    return client.ApiClient(configuration)
