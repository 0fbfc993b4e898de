"""Choosing a machine type from a cpu count and a memory size: the zone's machine types
(``machineTypes.list``, read once per zone and cached) and the choice table.

The choice is the smallest type (CPUs, then memory) of the most preferred family in
``GceSettings.machine_families`` that has at least the CPUs and memory asked for; shared-
core and deprecated types are never chosen. With a GPU (``worker_gpu``) it is either a
type that comes with exactly those accelerators (A2, G2, A3...), or an N1 type with the
accelerators attached (``guestAccelerators``; T4, V100, P100 and P4 only), whichever is
smaller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ....core.models import InstanceRole
from ....core.ports import LaunchRefused
from ....core.units import parse_bytes

GIB = 2**30
ATTACH_FAMILY = "n1"  # the family that takes attached GPUs, of these kinds only:
ATTACHABLE_GPUS = frozenset(
    f"nvidia-tesla-{kind}{suffix}"
    for kind in ("t4", "v100", "p100", "p4")
    for suffix in ("", "-vws")
)


class MachineTypeError(LaunchRefused):
    """No machine type of the zone fits the request. ``field`` names what the user asked
    for (``worker_cpu``, ``scheduler_memory``, ``worker_gpu``). Retrying cannot help: the
    lifecycle fails the cluster with this message."""

    field: str

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message, field)


@dataclass(frozen=True)
class MachineType:
    """What the choice needs of a ``compute_v1.MachineType``."""

    name: str
    cpus: int
    memory_mb: int
    shared_cpu: bool = False
    deprecated: bool = False
    accelerators: tuple[tuple[str, int], ...] = ()

    @property
    def family(self) -> str:
        return self.name.split("-", 1)[0]


@dataclass(frozen=True)
class Choice:
    """The machine type to launch, and the accelerators to attach to it (if any)."""

    machine_type: str
    attach: tuple[tuple[str, int], ...] = field(default=())


def choose(
    types: Iterable[MachineType],
    *,
    cpu: int,
    memory: str,
    role: InstanceRole,
    families: list[str],
    gpu: tuple[str, int] | None = None,
    zone: str = "",
) -> Choice:
    """The machine type for ``cpu`` CPUs and ``memory`` (such as ``"4 GiB"``) of ``role``.

    Raises
    ------
    MachineTypeError
        Nothing of ``families`` (or, with ``gpu``, nothing with or taking those GPUs)
        is that large in the zone; the message names the field and the largest there is.
    """
    want = parse_bytes(memory)
    usable = [t for t in types if not t.shared_cpu and not t.deprecated]
    fits = [t for t in usable if t.cpus >= cpu and t.memory_mb * 2**20 >= want]
    where = f" in zone {zone}" if zone else ""
    if gpu is not None:
        bundled = [t for t in fits if t.accelerators == (gpu,)]
        attachable = [
            t
            for t in fits
            if gpu[0] in ATTACHABLE_GPUS and t.family == ATTACH_FAMILY and not t.accelerators
        ]
        best = sorted([*bundled, *attachable], key=lambda t: (t.cpus, t.memory_mb))
        if not best:
            raise MachineTypeError(
                f"worker_gpu={gpu[0]}:{gpu[1]} with {role.value}_cpu={cpu} and "
                f"{role.value}_memory={memory!r}: no machine type{where} comes with or takes "
                f"those GPUs at that size; lower {role.value}_cpu or {role.value}_memory, or "
                "choose another accelerator",
                "worker_gpu",
            )
        top = best[0]
        return Choice(top.name, () if top.accelerators else (gpu,))
    rank = {f: i for i, f in enumerate(families)}
    ours = [t for t in usable if t.family in rank and not t.accelerators]
    candidates = sorted(
        (t for t in fits if t.family in rank and not t.accelerators),
        key=lambda t: (rank[t.family], t.cpus, t.memory_mb),
    )
    if candidates:
        return Choice(candidates[0].name)
    most_cpus = max((t.cpus for t in ours), default=0)
    if cpu > most_cpus:
        field_name, detail = f"{role.value}_cpu", f"the most CPUs is {most_cpus}"
    else:
        most = max((t.memory_mb for t in ours if t.cpus >= cpu), default=0) * 2**20 / GIB
        field_name, detail = f"{role.value}_memory", f"the most memory is {most:g} GiB"
    raise MachineTypeError(
        f"{role.value}_cpu={cpu} and {role.value}_memory={memory!r}: no machine type of "
        f"{', '.join(families)}{where} is that large ({detail}); ask for less in "
        f"{field_name}",
        field_name,
    )


class MachineTypeCatalog:
    """The machine types of each zone, listed once (``list_types(zone)``) and kept.
    Thread-safe; a failed listing is not cached."""

    def __init__(self, list_types: Callable[[str], list[MachineType]]) -> None:
        self._list = list_types
        self._lock = threading.Lock()
        self._zones: dict[str, list[MachineType]] = {}

    def types(self, zone: str) -> list[MachineType]:
        with self._lock:
            if zone not in self._zones:
                self._zones[zone] = self._list(zone)
            return self._zones[zone]
