"""Where a cluster's instances run: which machine types (``worker_vm_types``,
``scheduler_vm_types``, or the smallest that fit ``*_cpu``/``*_memory``), ``arm``, worker
GPUs, the spot policy, and who may reach them (``allow_ingress_from``, see ``ingress``).

The choice itself is pure (``choose``) over ``MachineType`` rows that a cloud adapter
reads once per region (EC2: ``DescribeInstanceTypes``); the ``MachineCatalog`` port is
what the core asks, at create (a clear 422) and at launch.
"""

from __future__ import annotations

import re
from typing import Literal, Protocol

from pydantic import BaseModel, Field, field_validator

from . import ingress
from .errors import Invalid

MACHINE_TYPE = re.compile(r"^[a-z0-9-]+\.[a-z0-9-]+$")
MAX_TYPES = 20
CANDIDATES = 5  # automatic choice: this many of the smallest, in order, for capacity
# What the automatic choice considers: general purpose, compute and memory optimised
# families, and NVIDIA GPU ones for GPU workers; never bare metal or older generations.
AUTO_FAMILIES = ("c", "m", "r")
GPU_FAMILIES = ("g", "p")
SpotPolicy = Literal["on-demand", "spot", "spot_with_fallback"]


class Placement(BaseModel):
    """The placement fields of ``ClusterRequest`` (its base class)."""

    allow_ingress_from: Literal["me"] | list[str] = Field(
        default="me",
        description="Who may reach the scheduler and dashboard: CIDR blocks such as "
        "'203.0.113.0/24', or 'me' (alone or in the list) for the address this request "
        f"came from, as a /32. At most {ingress.MAX_BLOCKS}; '0.0.0.0/0' only when given.",
    )
    worker_vm_types: list[str] | None = Field(
        default=None,
        description="Machine types for workers, in order of preference; each must exist "
        "in the deployment's region and fit worker_cpu, worker_memory, worker_gpu and arm. "
        "Omitted: the smallest types that fit.",
    )
    scheduler_vm_types: list[str] | None = Field(
        default=None, description="Like worker_vm_types, for the scheduler (never a GPU)."
    )
    arm: bool = Field(default=False, description="ARM (arm64) machines for every instance.")
    worker_gpu: int = Field(
        default=0, ge=0, le=16, strict=True, description="NVIDIA GPUs per worker (not scheduler)."
    )
    spot_policy: SpotPolicy | None = Field(
        default=None,
        description="'on-demand', 'spot', or 'spot_with_fallback' (spot, on demand when "
        "there is no spot capacity); omitted: the deployment's default.",
    )

    @field_validator("allow_ingress_from")
    @classmethod
    def _check_ingress(cls, v: str | list[str]) -> str | list[str]:
        return v if isinstance(v, str) else ingress.check_list(v)

    @field_validator("worker_vm_types", "scheduler_vm_types")
    @classmethod
    def _check_types(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not 1 <= len(v) <= MAX_TYPES:
            raise ValueError(f"must list 1 to {MAX_TYPES} machine types")
        for name in v:
            if not MACHINE_TYPE.match(name):
                raise ValueError(f"{name[:40]!r} is not a machine type such as 'm6i.large'")
        return list(dict.fromkeys(v))


class MachineType(BaseModel):
    """One machine type of a region, as ``choose`` needs it."""

    name: str
    cores: int
    memory_bytes: int
    architectures: list[str]  # "x86_64", "arm64"
    gpus: int = 0
    gpu_model: str | None = None
    spot: bool = True
    burstable: bool = False
    current: bool = True

    @property
    def arch(self) -> str:
        return "arm64" if "arm64" in self.architectures else self.architectures[0]


def fits(t: MachineType, cores: int, memory: int, arch: str, gpus: int) -> str | None:
    """Why ``t`` does not fit the request, or ``None`` when it does."""
    if arch not in t.architectures:
        return f"is {'/'.join(t.architectures)}, not {arch}"
    if t.cores < cores:
        return f"has {t.cores} vCPUs, fewer than {cores}"
    if t.memory_bytes < memory:
        return f"has {t.memory_bytes / 2**30:g} GiB of memory, less than {memory / 2**30:g} GiB"
    if t.gpus < gpus:
        return f"has {t.gpus} GPUs, fewer than {gpus}"
    return None


def choose(
    catalog: dict[str, MachineType],
    *,
    field: str,
    cores: int,
    memory: int,
    arch: str,
    gpus: int,
    explicit: list[str] | None = None,
    pool: list[str] | None = None,
    spot: bool = False,
    gpu_allowed: bool = True,
) -> list[str]:
    """Machine types for one role, in order of preference.

    ``explicit`` types must all exist in ``catalog`` and fit; otherwise the ``CANDIDATES``
    smallest of ``pool`` (default: the current, not burstable, not bare-metal types of
    ``AUTO_FAMILIES``, or ``GPU_FAMILIES`` for GPUs) that fit, by vCPUs, then memory,
    plainest family first (``c7g`` before ``c7gd``). A role that asks no GPU gets none. Raises
    ``Invalid`` naming ``field`` for an unknown or unfitting type (a GPU type where
    ``gpu_allowed`` is false), or when nothing fits.
    """
    if explicit:
        for name in explicit:
            found = catalog.get(name)
            if found is None:
                raise Invalid(f"{field}: {name!r} does not exist in this region", field=field)
            why = fits(found, cores, memory, arch, gpus)
            if not why and found.gpus and not gpu_allowed:
                why = f"has {found.gpus} GPUs, which this role never uses"
            if why:
                raise Invalid(f"{field}: {name!r} {why}", field=field)
        return list(explicit)
    families = GPU_FAMILIES if gpus else AUTO_FAMILIES
    names = pool or [
        n
        for n, t in catalog.items()
        if t.current and not t.burstable and "metal" not in n and n[0] in families
    ]
    rows = [catalog[n] for n in names if n in catalog]
    fitting = [
        t
        for t in rows
        if fits(t, cores, memory, arch, gpus) is None
        and (gpus > 0) == (t.gpus > 0)
        and (t.spot or not spot)
    ]
    fitting.sort(key=lambda t: (t.cores, t.memory_bytes, t.gpus, len(t.name.split(".")[0]), t.name))
    if not fitting:
        gpu = f", {gpus} GPU(s)" if gpus else ""
        raise Invalid(
            f"{field}: no machine type in this region has {cores} vCPUs, "
            f"{memory / 2**30:g} GiB{gpu} on {arch}; ask for less"
            + (" or widen the deployment's BILLOW_INSTANCE_TYPES" if pool else ""),
            field=field,
        )
    return [t.name for t in fitting[:CANDIDATES]]


class MachineCatalog(Protocol):
    """Machine types of the deployment's region (a cloud adapter; ``None`` in
    ``Ports`` for the embedded server, whose instances are local processes)."""

    def types(self, names: list[str] | None = None) -> dict[str, MachineType]:
        """Every machine type of the region by name, read once and cached; or only
        ``names`` (those that exist), which may cost less. Raises on infrastructure
        errors."""
        ...

    def pool(self) -> list[str] | None:
        """The deployment's own list of types to choose from (``None``: all)."""
        ...


def machine_types(catalog: MachineCatalog, request: Placement, role: str) -> list[str]:
    """The machine types of ``role`` (``"scheduler"`` or ``"worker"``) for ``request``, a
    ``ClusterRequest``; raises ``Invalid`` as ``choose`` does. The scheduler never gets
    a GPU."""
    from .units import parse_bytes

    worker = role == "worker"
    explicit = request.worker_vm_types if worker else request.scheduler_vm_types
    return choose(
        catalog.types(explicit) if explicit else catalog.types(),
        field=f"{role}_vm_types" if explicit else f"{role}_cpu",
        cores=int(getattr(request, f"{role}_cpu")),
        memory=parse_bytes(getattr(request, f"{role}_memory")),
        arch=arch_of(request),
        gpus=request.worker_gpu if worker else 0,
        explicit=explicit,
        pool=catalog.pool(),
        spot=request.spot_policy == "spot",
        gpu_allowed=worker,
    )


def needs_check(request: Placement, role: str) -> bool:
    """Whether a create must check ``role``'s machine types (a 422 before anything
    exists): explicit types always (a small lookup); the automatic choice only for
    requests that size, pick arm or GPUs. The default, 1 vCPU and 2 GiB on x86_64, fits
    in every region, and reading a whole region's types is left to the launch."""
    worker = role == "worker"
    explicit = request.worker_vm_types if worker else request.scheduler_vm_types
    defaults = type(request).model_fields
    sized = any(
        getattr(request, f) != defaults[f].default
        for f in (f"{role}_cpu", f"{role}_memory", "arm")
        if f in defaults
    )
    return bool(explicit or sized or (worker and request.worker_gpu))


def arch_of(request: Placement) -> str:
    return "arm64" if request.arm else "x86_64"


def listing(
    types: dict[str, MachineType],
    cores: int | None = None,
    memory: int | None = None,
    arch: str | None = None,
    gpu: int | None = None,
    limit: int = 200,
) -> list[dict[str, object]]:
    """The types with at least ``cores`` vCPUs and ``memory`` bytes on ``arch``, and
    ``gpu`` GPUs (0: none; ``None``: any), smallest first, at most ``limit``."""
    out = []
    for t in types.values():
        if arch is not None and arch not in t.architectures:
            continue
        if t.cores < (cores or 0) or t.memory_bytes < (memory or 0):
            continue
        if gpu is not None and (t.gpus < gpu or (gpu == 0 and t.gpus > 0)):
            continue
        out.append(t)
    out.sort(key=lambda t: (t.cores, t.memory_bytes, t.gpus, t.name))
    return [
        {
            "name": t.name,
            "cores": t.cores,
            "memory_gib": round(t.memory_bytes / 2**30, 2),
            "arch": t.arch,
            "gpus": t.gpus,
            "gpu_model": t.gpu_model,
            "spot": t.spot,
        }
        for t in out[:limit]
    ]
