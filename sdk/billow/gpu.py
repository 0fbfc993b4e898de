"""GPU use measured where the GPUs are: on each worker's machine, through NVML.

NVML's Python binding comes from ``nvidia-ml-py`` (the optional ``billow[gpu]`` extra,
imported as ``pynvml`` only when installed). A worker whose machine has NVIDIA GPUs adds
the ``billow_gpu`` metric (``worker_metrics``) to its Dask heartbeats; the Billow
scheduler plugin sums them over workers (``aggregate``), so the under-use warning is
about workers' GPUs alone: the scheduler's own machine is never probed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("billow.gpu")
METRIC = "billow_gpu"


class GPUProbe:
    """The NVIDIA GPUs of this machine. ``nvml`` is the ``pynvml`` module (default:
    imported if installed); without it, a driver or a GPU, ``handles`` is empty."""

    def __init__(self, nvml: Any | None = None) -> None:
        self.handles: list[Any] = []
        self._nvml = nvml
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
            count = self._nvml.nvmlDeviceGetCount()
            self.handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception:  # no nvidia-ml-py, no driver, no GPU: report none
            self.handles = []

    def utilisation(self) -> list[float]:
        return [self._nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100 for h in self.handles]

    def report(self) -> dict[str, Any] | None:
        """``{"count", "utilization": [0..1 per GPU], "memory_used", "memory_total"}``
        (bytes per GPU), or ``None`` without GPUs or when NVML fails."""
        if not self.handles:
            return None
        try:
            memory = [self._nvml.nvmlDeviceGetMemoryInfo(h) for h in self.handles]
            return {
                "count": len(self.handles),
                "utilization": self.utilisation(),
                "memory_used": [int(m.used) for m in memory],
                "memory_total": [int(m.total) for m in memory],
            }
        except Exception as e:
            log.warning("GPU probe failed: %s", e)
            return None


def worker_metrics(probe: GPUProbe | None = None) -> dict[str, Callable[[Any], Any]]:
    """The Dask worker metric reporting this machine's GPUs; ``{}`` when it has none."""
    probe = probe if probe is not None else GPUProbe()
    if not probe.handles:
        return {}
    return {METRIC: lambda worker: probe.report()}


def aggregate(reports: Iterable[Any]) -> dict[str, Any]:
    """Workers' ``billow_gpu`` reports summed: ``gpus``, the highest and the mean
    utilisation, memory used and total (bytes). ``gpus`` is 0 when none reported."""
    usage: list[float] = []
    used = total = 0
    for report in reports:
        if not isinstance(report, dict) or not report.get("count"):
            continue
        usage += [float(u) for u in report.get("utilization", [])]
        used += sum(int(b) for b in report.get("memory_used", []))
        total += sum(int(b) for b in report.get("memory_total", []))
    if not usage:
        return {"gpus": 0}
    return {
        "gpus": len(usage),
        "utilization_max": max(usage),
        "utilization_mean": sum(usage) / len(usage),
        "memory_used": used,
        "memory_total": total,
    }
