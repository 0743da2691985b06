"""The one interface every GPU backend implements (nvml, smi, dcgm, simulated, replay).

Units are in every name. Queries a backend cannot answer return ``None`` rather than raise,
so the monitor records what there is; control calls raise the project's own exceptions.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from sd_energy_contract.gpus import load_gpu_specs
from sd_energy_contract.layout import SAMPLE_COLUMNS

__all__ = ["GpuBackend", "GpuSample", "SAMPLE_COLUMNS", "load_gpu_specs"]


@dataclass
class GpuSample:
    mono_s: float
    power_w: float | None = None
    energy_mj: float | None = None
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    gpu_util_pct: float | None = None
    mem_used_mib: float | None = None
    temp_c: float | None = None
    power_avg_w: float | None = None   # the driver's averaged reading, where it differs from power_w
    throttle_mask: int | None = None   # clock-event (throttle) reasons bitmask at this sample
    extra: dict[str, float | None] = field(default_factory=dict)  # DCGM activity fields

    def row(self) -> dict:
        d = {c: getattr(self, c) for c in SAMPLE_COLUMNS}
        d.update(self.extra)
        return d


class GpuBackend(ABC):
    """One GPU seen through one measurement/control path."""

    name: str = "base"
    synthetic: bool = False  # True where numbers are modelled, not measured
    replays: bool = False    # True where runs come from recordings instead of running the app
    # How often the sensors give a new value (s); None where unknown. A window shorter than a few
    # of these measures the sensor's timing, not the work (the window API warns).
    power_update_period_s: float | None = None
    energy_update_period_s: float | None = None
    # What ``GpuSample.power_w`` is: "instantaneous", "averaged" (a moving average, e.g. H100
    # nvmlDeviceGetPowerUsage over 1 s) or "modelled" (the simulated GPU). Recorded in every row.
    power_source: str = "averaged"
    # How the last lock_sm_clock took effect: "locked" (nvmlDeviceSetGpuLockedClocks), "application"
    # (application clocks, the non-root fallback), "slurm-verified" (set by SLURM, read back only).
    clock_method: str = "locked"

    def __init__(self, index: int = 0):
        self.index = index

    # identity
    @abstractmethod
    def device_name(self) -> str: ...

    @abstractmethod
    def uuid(self) -> str: ...

    def driver_version(self) -> str | None:
        return None

    # clocks
    @abstractmethod
    def supported_sm_clocks_mhz(self, mem_clock_mhz: int | None = None) -> list[int]:
        """Supported SM clocks, highest first."""

    def supported_mem_clocks_mhz(self) -> list[int]:
        return []

    @abstractmethod
    def lock_sm_clock(self, mhz: int, mem_mhz: int | None = None) -> None: ...

    @abstractmethod
    def reset_clocks(self) -> None: ...

    # measurements
    @abstractmethod
    def sample(self) -> GpuSample: ...

    def energy_mj(self) -> float | None:
        """The hardware energy counter in mJ (monotonic), or None where there is none."""
        return None

    def throttle_reasons(self) -> str:
        return ""

    # what the launcher needs around each run, so it never asks which backend it has
    def visible_devices(self) -> list[int]:
        """Indices of the GPUs this job can see through this backend (``--all-gpus`` sweeps each)."""
        return [self.index]

    def child_env(self) -> dict[str, str]:
        """Environment variables that put a child process on exactly this GPU."""
        return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": self.uuid()}

    def begin_run(self, events_path: Path | None) -> None:  # noqa: B027 - optional hook
        """A run starts; its phase events will be appended to ``events_path`` (the simulated GPU reads them)."""

    def end_run(self) -> None:  # noqa: B027 - optional hook
        """The run ended."""

    def close(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing to release
        """Release handles; clocks are restored by the ClockGuard, not here."""

    # helpers shared by subclasses
    @staticmethod
    def now() -> float:
        return time.monotonic()
