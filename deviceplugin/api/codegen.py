"""Regenerates the Python code for the kubelet's protos (``make proto``).

The two kubelet protos are both called ``api.proto`` and both define
``TopologyInfo``, ``NUMANode`` and ``CDIDevice``; protobuf's descriptor pool
would refuse the second if both were registered under the same file name. They
are therefore compiled under distinct virtual paths, which also places the
generated modules inside this package:

- ``proto/deviceplugin/v1beta1/api.proto`` -> ``deviceplugin.api.v1beta1.api_pb2``
- ``proto/podresources/v1/api.proto`` -> ``deviceplugin.api.podresources.v1.api_pb2``
- ``proto/dra/v1/api.proto`` -> ``deviceplugin.api.dra.v1.api_pb2`` (DRA mode)
- ``proto/pluginregistration/v1/api.proto`` -> ``deviceplugin.api.pluginregistration.v1.api_pb2``
- ``proto/drahealth/v1/api.proto`` -> ``deviceplugin.api.drahealth.v1.api_pb2`` (proto
  package ``v1``, like PodResources: distinct file names keep both in one pool, and their
  message names do not collide)

Needs ``grpcio-tools`` (a development dependency); a test proves the checked-in
files are what this produces.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTOS = (
    "proto/deviceplugin/v1beta1/api.proto",
    "proto/podresources/v1/api.proto",
    "proto/dra/v1/api.proto",
    "proto/pluginregistration/v1/api.proto",
    "proto/drahealth/v1/api.proto",
)
GENERATED = (
    "deviceplugin/api/v1beta1/api_pb2.py",
    "deviceplugin/api/v1beta1/api_pb2.pyi",
    "deviceplugin/api/v1beta1/api_pb2_grpc.py",
    "deviceplugin/api/podresources/v1/api_pb2.py",
    "deviceplugin/api/podresources/v1/api_pb2.pyi",
    "deviceplugin/api/podresources/v1/api_pb2_grpc.py",
    "deviceplugin/api/dra/v1/api_pb2.py",
    "deviceplugin/api/dra/v1/api_pb2.pyi",
    "deviceplugin/api/dra/v1/api_pb2_grpc.py",
    "deviceplugin/api/pluginregistration/v1/api_pb2.py",
    "deviceplugin/api/pluginregistration/v1/api_pb2.pyi",
    "deviceplugin/api/pluginregistration/v1/api_pb2_grpc.py",
    "deviceplugin/api/drahealth/v1/api_pb2.py",
    "deviceplugin/api/drahealth/v1/api_pb2.pyi",
    "deviceplugin/api/drahealth/v1/api_pb2_grpc.py",
)


def generate(out_dir: Path) -> None:
    """Compile the protos into ``out_dir`` (the repository root for a real run)."""
    from grpc_tools import protoc

    args = [
        "protoc",
        f"-Ideviceplugin/api={REPO / 'proto/deviceplugin'}",
        f"-Ideviceplugin/api/podresources={REPO / 'proto/podresources'}",
        f"-Ideviceplugin/api/dra={REPO / 'proto/dra'}",
        f"-Ideviceplugin/api/pluginregistration={REPO / 'proto/pluginregistration'}",
        f"-Ideviceplugin/api/drahealth={REPO / 'proto/drahealth'}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(REPO / p) for p in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    packages = {parent for p in GENERATED for parent in Path(p).parents}
    for package in packages - {Path("."), Path("deviceplugin"), Path("deviceplugin/api")}:
        (out_dir / package / "__init__.py").touch()


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO)
