"""fatia's exception hierarchy, in one place.

Every error fatia reports to a person derives from :class:`FatiaError` and carries the
whole user-facing message; a library error that caused it is chained as ``__cause__``.
The tree lives in the lowest layer so that both sides use it; the Kubernetes-side
errors name nothing of Kubernetes' libraries.

    FatiaError
    ├── ConfigError            a config that cannot be used (the message names the key path)
    ├── PlanError              a layout that cannot be placed on a GPU
    ├── ApplyError             NVML refused a layout change (rolled back), or it did not verify
    │   └── StepFailed         one NVML step on one GPU, named
    ├── NvmlError              NVML cannot be initialised
    ├── AllocationError        a kubelet request that must not be granted
    ├── PodResourcesUnavailable  the kubelet's PodResources API did not answer
    ├── ApiError               the Kubernetes API server refused a request (its Status)
    └── CredentialsError       no usable credentials for the Kubernetes API
"""

from __future__ import annotations


class FatiaError(Exception):
    """An error with a message meant for the person running fatia."""


class ConfigError(FatiaError):
    """A config that cannot be used; the message names the key path."""


class PlanError(FatiaError):
    """A desired layout that cannot be placed on a GPU; the message names the rule."""


class ApplyError(FatiaError):
    """A layout change that NVML refused or that could not be verified.

    ``gpu`` is the index of the GPU whose step failed, when one GPU is to blame: the
    agent then applies the others without it.
    """

    def __init__(self, message: str, *, gpu: int | None = None) -> None:
        super().__init__(message)
        self.gpu = gpu


class StepFailed(ApplyError):
    """An NVML step refused: which GPU (index, UUID), which step, which NVML error."""

    def __init__(self, *, gpu: int, uuid: str, step: str, nvml_error: str) -> None:
        super().__init__(f"GPU {gpu} ({uuid}): {step} failed: {nvml_error}", gpu=gpu)
        self.uuid, self.step, self.nvml_error = uuid, step, nvml_error


class NvmlError(FatiaError):
    """NVML could not be initialised or answered with an error fatia cannot work around."""


class AllocationError(FatiaError):
    """A request the kubelet must not be granted; the message names the offending IDs."""


class PodResourcesUnavailable(FatiaError):
    """The kubelet's PodResources API did not answer."""


class ApiError(FatiaError):
    """A request the Kubernetes API server refused (``status`` >= 400), as its Status says."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message


class CredentialsError(FatiaError):
    """The kubeconfig or the service account gives no usable way to reach the API server."""
