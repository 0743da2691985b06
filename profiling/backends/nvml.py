"""NVIDIA GPUs through NVML (nvidia-ml-py, imported as ``pynvml``).

Energy comes from the hardware counter ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since
driver load, Volta and newer); power from ``nvmlDeviceGetPowerUsage`` (mW). Clocks are locked
with ``nvmlDeviceSetGpuLockedClocks`` (Volta+, root or ``nvidia-smi -acp 0``-style permission);
where that is not supported, application clocks are the fallback.
"""

from __future__ import annotations

import contextlib

from ..errors import ClockError, GpuError, GpuNotFoundError, GpuNotSupportedError, GpuPermissionError
from .base import GpuBackend, GpuSample


def _nvml():
    try:
        import pynvml
    except ImportError:
        raise GpuNotFoundError("nvidia-ml-py is not installed (pip install nvidia-ml-py), "
                               "or use --profiling-tool smi") from None
    return pynvml


def _map_error(pynvml, exc: Exception, what: str) -> GpuError:
    if isinstance(exc, pynvml.NVMLError_NoPermission):
        return GpuPermissionError(what)
    if isinstance(exc, pynvml.NVMLError_NotSupported):
        return GpuNotSupportedError(f"{what}: not supported by this GPU or driver")
    if isinstance(exc, (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded)):
        return GpuNotFoundError(f"{what}: NVIDIA driver not found; is this a GPU node?")
    return GpuError(f"{what}: {exc}")


class NvmlGpu(GpuBackend):
    name = "nvml"
    # The energy counter advances about every 100 ms; power is refreshed about as often (and on
    # H100/H200 it is a 1 s moving average: issue 12 adds the instantaneous field).
    power_update_period_s = 0.1
    energy_update_period_s = 0.1

    def __init__(self, index: int = 0):
        super().__init__(index)
        self.nv = _nvml()
        try:
            self.nv.nvmlInit()
            count = self.nv.nvmlDeviceGetCount()
        except self.nv.NVMLError as exc:
            raise _map_error(self.nv, exc, "NVML init") from None
        if index >= count:
            raise GpuNotFoundError(f"GPU index {index} does not exist: this node has {count} GPU(s)")
        self.handle = self.nv.nvmlDeviceGetHandleByIndex(index)
        self._has_energy: bool | None = None
        self._count = count

    def _call(self, what: str, fn, *args):
        try:
            return fn(self.handle, *args)
        except self.nv.NVMLError as exc:
            raise _map_error(self.nv, exc, what) from None

    def _maybe(self, fn, *args):
        try:
            return fn(self.handle, *args)
        except self.nv.NVMLError:
            return None

    @staticmethod
    def _str(v) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    def device_name(self) -> str:
        return self._str(self._call("device name", self.nv.nvmlDeviceGetName))

    def uuid(self) -> str:
        return self._str(self._call("device uuid", self.nv.nvmlDeviceGetUUID))

    def driver_version(self) -> str | None:
        try:
            return self._str(self.nv.nvmlSystemGetDriverVersion())
        except self.nv.NVMLError:
            return None

    def supported_mem_clocks_mhz(self) -> list[int]:
        return sorted(self._call("supported memory clocks", self.nv.nvmlDeviceGetSupportedMemoryClocks), reverse=True)

    def supported_sm_clocks_mhz(self, mem_clock_mhz: int | None = None) -> list[int]:
        mem = mem_clock_mhz or self.supported_mem_clocks_mhz()[0]
        clocks = self._call("supported graphics clocks", self.nv.nvmlDeviceGetSupportedGraphicsClocks, mem)
        return sorted(set(clocks), reverse=True)

    def lock_sm_clock(self, mhz: int, mem_mhz: int | None = None) -> None:
        try:
            self._call(f"lock SM clock at {mhz} MHz", self.nv.nvmlDeviceSetGpuLockedClocks, mhz, mhz)
        except GpuNotSupportedError:
            # Pre-Volta or restricted drivers: application clocks are the documented fallback.
            mem = mem_mhz or self.supported_mem_clocks_mhz()[0]
            self._call(f"set application clocks {mem},{mhz} MHz", self.nv.nvmlDeviceSetApplicationsClocks, mem, mhz)
        if mem_mhz:
            fn = getattr(self.nv, "nvmlDeviceSetMemoryLockedClocks", None)
            if fn is None:
                raise ClockError("this nvidia-ml-py has no nvmlDeviceSetMemoryLockedClocks; drop --memory-frequency")
            self._call(f"lock memory clock at {mem_mhz} MHz", fn, mem_mhz, mem_mhz)

    def reset_clocks(self) -> None:
        self._maybe(self.nv.nvmlDeviceResetGpuLockedClocks)
        self._maybe(self.nv.nvmlDeviceResetApplicationsClocks)
        fn = getattr(self.nv, "nvmlDeviceResetMemoryLockedClocks", None)
        if fn is not None:
            self._maybe(fn)

    def energy_mj(self) -> float | None:
        if self._has_energy is False:
            return None
        value = self._maybe(self.nv.nvmlDeviceGetTotalEnergyConsumption)
        self._has_energy = value is not None
        return float(value) if value is not None else None

    def throttle_reasons(self) -> str:
        fn = getattr(self.nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            self.nv.nvmlDeviceGetCurrentClocksThrottleReasons
        mask = self._maybe(fn)
        return f"0x{mask:x}" if mask is not None else ""

    def sample(self) -> GpuSample:
        nv = self.nv
        power = self._maybe(nv.nvmlDeviceGetPowerUsage)
        util = self._maybe(nv.nvmlDeviceGetUtilizationRates)
        mem = self._maybe(nv.nvmlDeviceGetMemoryInfo)
        return GpuSample(
            mono_s=self.now(),
            power_w=power / 1000.0 if power is not None else None,
            energy_mj=self.energy_mj(),
            sm_clock_mhz=self._maybe(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM),
            mem_clock_mhz=self._maybe(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_MEM),
            gpu_util_pct=util.gpu if util is not None else None,
            mem_used_mib=mem.used / 2**20 if mem is not None else None,
            temp_c=self._maybe(nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU),
        )

    def visible_devices(self) -> list[int]:
        """NVML counts what this job can see (a SLURM cgroup hides the other GPUs of the node)."""
        return list(range(self._count))

    def close(self) -> None:
        with contextlib.suppress(self.nv.NVMLError):
            self.nv.nvmlShutdown()
