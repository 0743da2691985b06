"""NVIDIA GPUs through NVML (nvidia-ml-py, imported as ``pynvml``).

Energy comes from the hardware counter ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since
driver load, Volta and newer; it advances in steps of about 100 ms). Power is the instantaneous
field ``NVML_FI_DEV_POWER_INSTANT`` (``nvmlDeviceGetFieldValues``) where the driver has it, decided
once when the backend opens: on H100/H200 ``nvmlDeviceGetPowerUsage`` is a 1 s moving average,
which smears every phase boundary by a second. ``nvmlDeviceGetPowerUsage`` is kept as
``power_avg_w`` in every sample either way, and ``power_source`` says what ``power_w`` is.

Clocks are locked with ``nvmlDeviceSetGpuLockedClocks`` (Volta+, root only). Where that is refused
(a non-root user) or not supported, application clocks (``nvmlDeviceSetApplicationsClocks``) are
the fallback; a non-root user may set those once the admin ran ``nvidia-smi -acp 0``.
``clock_method`` says which took effect, and every row records it.
"""

from __future__ import annotations

import contextlib

from sd_energy_contract.gpus import detect_gpu_type, sensor_model

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
        nv = self.nv
        # Older bindings and drivers only have the "throttle" name of the clock-event reasons.
        self._reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            getattr(nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
        self._unsupported = tuple(getattr(nv, n) for n in ("NVMLError_NotSupported", "NVMLError_FunctionNotFound")
                                  if hasattr(nv, n))
        self._instant = self._instant_power_mw() is not None
        self.power_source = "instantaneous" if self._instant else self._power_usage_kind()

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

    # power
    def _instant_power_mw(self) -> int | None:
        """``NVML_FI_DEV_POWER_INSTANT`` in mW, or None where the binding, driver or GPU lacks it (the
        per-field ``nvmlReturn`` says so while the call itself succeeds) or the call failed. A reading of
        0 counts as missing: no GPU that answers draws nothing."""
        nv = self.nv
        field = getattr(nv, "NVML_FI_DEV_POWER_INSTANT", None)
        fn = getattr(nv, "nvmlDeviceGetFieldValues", None)
        if field is None or fn is None:
            return None
        try:
            value = fn(self.handle, [field])[0]
        except nv.NVMLError:
            return None
        if value.nvmlReturn != getattr(nv, "NVML_SUCCESS", 0) or not value.value.uiVal:
            return None
        return int(value.value.uiVal)

    def _power_usage_kind(self) -> str:
        """What ``nvmlDeviceGetPowerUsage`` returns on this GPU: instantaneous up to GA100 (A100), a 1 s
        average on newer parts (``configs/gpus.yaml`` sensors); an unknown GPU is assumed averaged."""
        with contextlib.suppress(GpuError):
            settings = sensor_model(detect_gpu_type(self.device_name()) or "")
            if settings.get("power_usage_reading") == "instantaneous":
                return "instantaneous"
        return "averaged"

    # clocks
    def lock_sm_clock(self, mhz: int, mem_mhz: int | None = None) -> None:
        """Locked clocks; where refused (not root) or not supported, application clocks. Both refused:
        ``GpuPermissionError``, whose message says what an admin can do."""
        try:
            self._call(f"lock SM clock at {mhz} MHz", self.nv.nvmlDeviceSetGpuLockedClocks, mhz, mhz)
        except (GpuNotSupportedError, GpuPermissionError) as locked_refused:
            mem = mem_mhz or self.supported_mem_clocks_mhz()[0]
            try:
                self._call(f"set application clocks {mem},{mhz} MHz", self.nv.nvmlDeviceSetApplicationsClocks,
                           mem, mhz)
            except GpuPermissionError:
                locked = "refused" if isinstance(locked_refused, GpuPermissionError) else "not supported"
                raise GpuPermissionError(f"lock SM clock at {mhz} MHz (locked clocks {locked}, "
                                         "application clocks refused)") from None
            self.clock_method = "application"  # the memory clock is part of the application clocks
            return
        self.clock_method = "locked"
        if mem_mhz:
            fn = getattr(self.nv, "nvmlDeviceSetMemoryLockedClocks", None)
            if fn is None:
                raise ClockError("this nvidia-ml-py has no nvmlDeviceSetMemoryLockedClocks; drop --memory-frequency")
            self._call(f"lock memory clock at {mem_mhz} MHz", fn, mem_mhz, mem_mhz)

    def set_application_clocks(self, mhz: int, mem_mhz: int | None = None) -> None:
        """Application clocks only (``--clock-control application``, ``profiling.clocks.ClockGuard``)."""
        mem = mem_mhz or self.supported_mem_clocks_mhz()[0]
        self._call(f"set application clocks {mem},{mhz} MHz", self.nv.nvmlDeviceSetApplicationsClocks, mem, mhz)
        self.clock_method = "application"

    def applications_clock_mhz(self) -> int | None:
        """The application SM clock set now (what SLURM's ``--gpu-freq`` sets), read back by
        ``--clock-control slurm``; None where NVML cannot say."""
        fn = getattr(self.nv, "nvmlDeviceGetApplicationsClock", None)
        kind = getattr(self.nv, "NVML_CLOCK_GRAPHICS", getattr(self.nv, "NVML_CLOCK_SM", None))
        return self._maybe(fn, kind) if fn is not None and kind is not None else None

    def reset_clocks(self) -> None:
        self._maybe(self.nv.nvmlDeviceResetGpuLockedClocks)
        self._maybe(self.nv.nvmlDeviceResetApplicationsClocks)
        fn = getattr(self.nv, "nvmlDeviceResetMemoryLockedClocks", None)
        if fn is not None:
            self._maybe(fn)

    def energy_mj(self) -> float | None:
        """The counter, or None. Only NOT_SUPPORTED switches it off for good; any other error (a busy
        driver, a timeout) leaves this one reading out and the next one tries again."""
        if self._has_energy is False:
            return None
        try:
            value = self.nv.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except self._unsupported:
            self._has_energy = False
            return None
        except self.nv.NVMLError:
            return None
        self._has_energy = True
        return float(value)

    def throttle_mask(self) -> int | None:
        return self._maybe(self._reasons_fn) if self._reasons_fn is not None else None

    def throttle_reasons(self) -> str:
        mask = self.throttle_mask()
        return f"0x{mask:x}" if mask is not None else ""

    def sample(self) -> GpuSample:
        nv = self.nv
        usage = self._maybe(nv.nvmlDeviceGetPowerUsage)
        usage_w = usage / 1000.0 if usage is not None else None
        if self._instant:  # a failed read leaves a gap rather than mixing in the averaged reading
            instant = self._instant_power_mw()
            power_w = instant / 1000.0 if instant is not None else None
        else:
            power_w = usage_w
        util = self._maybe(nv.nvmlDeviceGetUtilizationRates)
        mem = self._maybe(nv.nvmlDeviceGetMemoryInfo)
        return GpuSample(
            mono_s=self.now(),
            power_w=power_w,
            power_avg_w=usage_w,
            throttle_mask=self.throttle_mask(),
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
