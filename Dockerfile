# syntax=docker/dockerfile:1
#
# fatia: Kubernetes device plugin + node agent for NVIDIA GPU time-slicing and
# MIG partitioning. Deployed by daemonset/ (kubectl apply -k daemonset/).
#
# NVML (libnvidia-ml.so) is NOT in this image and must not be: it has to match
# the host's kernel driver exactly. The NVIDIA container toolkit injects the
# host driver's library and the /dev/nvidia* nodes when the container starts
# (NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES / NVIDIA_MIG_*_DEVICES,
# set here and in the DaemonSet). Without a GPU, `fatia plan` and `fatia demo`
# run against the built-in simulator (--nvml sim:SPEC).

ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm
# The same Python on the full Debian image, which has a C compiler: fatia's one C
# extension (deviceplugin/kubelet/_offer.c) is compiled there, and only the wheel moves on.
ARG BUILDER_IMAGE=python:3.12.8-bookworm

# ---------------------------------------------------------------------------
# builder: fatia (compiled) and all its dependencies as wheels.
FROM ${BUILDER_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY daemonset/constraints.txt ./
COPY deviceplugin/ deviceplugin/
COPY mig/ mig/

# fatia itself (its extension compiled here), then its dependencies at the exact
# versions of daemonset/constraints.txt (binary wheels only; no compiler in the final
# image).
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && pip wheel --no-cache-dir --only-binary=:all: --constraint constraints.txt \
        --wheel-dir /wheels /wheels/fatia-*.whl

# ---------------------------------------------------------------------------
# final: the same base, the wheels installed from /wheels only.
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="fatia" \
      org.opencontainers.image.description="Kubernetes device plugin and node agent for NVIDIA GPU time-slicing and MIG partitioning" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/fatia-dev/fatia" \
      org.opencontainers.image.base.name="docker.io/library/python:3.12.8-slim-bookworm"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility

# The wheels are bind-mounted from the builder, so they never become a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/fatia-*.whl

# No USER: fatia runs as root on purpose. The kubelet's device-plugin and
# pod-resources directories are root-only (0750), and MIG management (MIG
# mode, GPU/compute instance create/destroy) needs CAP_SYS_ADMIN. The
# DaemonSet drops every other capability.
EXPOSE 9402
ENTRYPOINT ["fatia"]
CMD ["run"]
