"""The region's EC2 instance types (``DescribeInstanceTypes``) as the core's
``MachineCatalog``, and the default image per architecture (the public SSM parameters of
Amazon Linux 2023). Each is read once per process (per Lambda container, so per region)
and cached."""

from __future__ import annotations

import threading
from typing import Any

from ....core.placement import MachineType

# Public parameters AWS keeps pointing at the latest Amazon Linux 2023 image.
AL2023_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"


def machine_type(row: dict[str, Any]) -> MachineType:
    """One ``DescribeInstanceTypes`` row as a ``MachineType`` (NVIDIA GPUs only count:
    they are what Dask workers use)."""
    gpus = [
        g for g in (row.get("GpuInfo") or {}).get("Gpus", []) if g.get("Manufacturer") == "NVIDIA"
    ]
    return MachineType(
        name=row["InstanceType"],
        cores=int(row["VCpuInfo"]["DefaultVCpus"]),
        memory_bytes=int(row["MemoryInfo"]["SizeInMiB"]) * 2**20,
        architectures=list(row["ProcessorInfo"]["SupportedArchitectures"]),
        gpus=sum(int(g.get("Count", 0)) for g in gpus),
        gpu_model=gpus[0].get("Name") if gpus else None,
        spot="spot" in row.get("SupportedUsageClasses", []),
        burstable=bool(row.get("BurstablePerformanceSupported")),
        current=bool(row.get("CurrentGeneration", True)),
    )


# The region's types, read once per process: (region, endpoint) -> types; and types
# looked up by name (explicit requests), (region, endpoint) -> name -> type or None.
_CACHE: dict[tuple[str, str], dict[str, MachineType]] = {}
_NAMED: dict[tuple[str, str], dict[str, MachineType | None]] = {}
_CACHE_LOCK = threading.Lock()


class EC2MachineCatalog:
    """``MachineCatalog`` over one region's EC2 client. ``pool`` is the deployment's
    ``BILLOW_INSTANCE_TYPES`` (empty: every type of the region)."""

    def __init__(self, ec2: Any, pool: list[str] | None = None) -> None:
        self.ec2 = ec2
        self._pool = list(pool or []) or None

    def _key(self) -> tuple[str, str]:
        return (str(self.ec2.meta.region_name), str(self.ec2.meta.endpoint_url))

    def types(self, names: list[str] | None = None) -> dict[str, MachineType]:
        """Every x86_64 and arm64 type of the region (the first call of a process reads
        them all: one ``DescribeInstanceTypes`` pagination), or only ``names`` (one small
        call per name not seen yet; unknown names are left out)."""
        key = self._key()
        with _CACHE_LOCK:
            if names is not None and key not in _CACHE:
                return self._named(key, names)
            if key not in _CACHE:
                found: dict[str, MachineType] = {}
                for page in self.ec2.get_paginator("describe_instance_types").paginate():
                    for row in page["InstanceTypes"]:
                        archs = row["ProcessorInfo"]["SupportedArchitectures"]
                        if "x86_64" in archs or "arm64" in archs:
                            found[row["InstanceType"]] = machine_type(row)
                _CACHE[key] = found
            if names is not None:
                return {n: _CACHE[key][n] for n in names if n in _CACHE[key]}
            return _CACHE[key]

    def _named(self, key: tuple[str, str], names: list[str]) -> dict[str, MachineType]:
        from botocore.exceptions import ClientError

        from ..errors import error_code

        known = _NAMED.setdefault(key, {})
        for name in names:
            if name in known:
                continue
            try:
                rows = self.ec2.describe_instance_types(InstanceTypes=[name])["InstanceTypes"]
            except ClientError as e:
                if error_code(e) != "InvalidInstanceType":
                    raise
                rows = []
            known[name] = machine_type(rows[0]) if rows else None
        return {n: t for n in names if (t := known.get(n)) is not None}

    def pool(self) -> list[str] | None:
        return self._pool


class AmiResolver:
    """The image of a cluster's instances: ``override`` (``BILLOW_AMI_ID``) when set, else
    the latest Amazon Linux 2023 of the architecture, from SSM (cached)."""

    def __init__(self, ssm: Any, override: str | None = None) -> None:
        self.ssm = ssm
        self.override = override
        self._found: dict[str, str] = {}
        self._lock = threading.Lock()

    def image_for(self, arch: str) -> str:
        """Raises ``botocore.exceptions.ClientError`` when SSM cannot be read."""
        if self.override:
            return self.override
        with self._lock:
            if arch not in self._found:
                name = AL2023_PARAMETER.format(arch=arch)
                self._found[arch] = str(self.ssm.get_parameter(Name=name)["Parameter"]["Value"])
            return self._found[arch]
