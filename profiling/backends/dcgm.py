"""DCGM profiling counters through ``dcgmi dmon``, for the activity features power models need.

``dcgmi dmon`` streams one line per interval; a reader thread keeps the latest values and
``sample()`` returns them. Clock control and identity go through NVML (or nvidia-smi when
the bindings are missing), since DCGM has no locked-clock call of its own.
"""

from __future__ import annotations

import shutil
import subprocess
import threading

from ..errors import GpuError, GpuNotFoundError
from .base import GpuBackend, GpuSample

# DCGM field id -> our column name.
FIELDS = {155: "power_w", 156: "energy_mj", 100: "sm_clock_mhz", 101: "mem_clock_mhz", 203: "gpu_util_pct",
          252: "mem_used_mib", 150: "temp_c", 1002: "sm_active", 1003: "sm_occupancy", 1004: "tensor_active",
          1005: "dram_active", 1006: "fp64_active", 1007: "fp32_active", 1008: "fp16_active"}
CORE = {"power_w", "energy_mj", "sm_clock_mhz", "mem_clock_mhz", "gpu_util_pct", "mem_used_mib", "temp_c"}


def parse_dmon_line(line: str, gpu_index: int) -> dict[str, float | None] | None:
    """One ``GPU 0  55.1  12345 ...`` data line -> {column: value}; headers and other GPUs -> None."""
    parts = line.split()
    if len(parts) < 2 or parts[0] != "GPU" or parts[1] != str(gpu_index):
        return None
    values = parts[2:]
    if len(values) != len(FIELDS):
        return None
    out: dict[str, float | None] = {}
    for name, raw in zip(FIELDS.values(), values, strict=True):
        try:
            out[name] = float(raw)
        except ValueError:
            out[name] = None  # N/A
    return out


class DcgmGpu(GpuBackend):
    name = "dcgm"
    power_update_period_s = 0.1  # dmon's -d interval (100 ms by default) bounds what it can show
    energy_update_period_s = 0.1

    def __init__(self, index: int = 0, interval_ms: int = 100):
        super().__init__(index)
        exe = shutil.which("dcgmi")
        if not exe:
            raise GpuNotFoundError("dcgmi not found on PATH: install DCGM or use --profiling-tool nvml")
        from . import open_backend

        try:
            self.control = open_backend("nvml", index)
        except GpuError:
            self.control = open_backend("smi", index)
        fields = ",".join(str(f) for f in FIELDS)
        self._proc = subprocess.Popen([exe, "dmon", "-i", str(index), "-e", fields, "-d", str(interval_ms)],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._latest: dict[str, float | None] = {}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10):
            self.close()
            raise GpuError("dcgmi dmon produced no data in 10 s: is the DCGM host engine (nv-hostengine) running?")

    def _read(self) -> None:
        for line in self._proc.stdout:
            row = parse_dmon_line(line, self.index)
            if row is not None:
                self._latest = row
                self._ready.set()

    def device_name(self) -> str:
        return self.control.device_name()

    def uuid(self) -> str:
        return self.control.uuid()

    def driver_version(self) -> str | None:
        return self.control.driver_version()

    def supported_sm_clocks_mhz(self, mem_clock_mhz: int | None = None) -> list[int]:
        return self.control.supported_sm_clocks_mhz(mem_clock_mhz)

    def supported_mem_clocks_mhz(self) -> list[int]:
        return self.control.supported_mem_clocks_mhz()

    def lock_sm_clock(self, mhz: int, mem_mhz: int | None = None) -> None:
        self.control.lock_sm_clock(mhz, mem_mhz)

    def reset_clocks(self) -> None:
        self.control.reset_clocks()

    def energy_mj(self) -> float | None:
        return self._latest.get("energy_mj")

    def visible_devices(self) -> list[int]:
        return self.control.visible_devices()

    def throttle_reasons(self) -> str:
        return self.control.throttle_reasons()

    def sample(self) -> GpuSample:
        row = dict(self._latest)
        return GpuSample(mono_s=self.now(), **{k: row.get(k) for k in CORE},
                         extra={k: v for k, v in row.items() if k not in CORE})

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self.control.close()
