"""NVIDIA GPUs through the ``nvidia-smi`` CLI, for sites without NVML Python bindings.

Every call is an argument list (never a shell). nvidia-smi has no energy counter field, so
energy is integrated from power by the monitor.
"""

from __future__ import annotations

import shutil
import subprocess

from ..errors import ClockError, GpuError, GpuNotFoundError, GpuNotSupportedError, GpuPermissionError
from ..smi_parse import parse_query_csv, parse_supported_clocks
from .base import GpuBackend, GpuSample

QUERY_FIELDS = ["power.draw", "clocks.sm", "clocks.mem", "utilization.gpu", "memory.used", "temperature.gpu",
                "clocks_throttle_reasons.active"]


class SmiGpu(GpuBackend):
    name = "smi"
    power_update_period_s = 0.1  # power.draw (a 1 s average on H100/H200; power.draw.instant is issue 12)

    def __init__(self, index: int = 0, executable: str = "nvidia-smi"):
        super().__init__(index)
        self.exe = shutil.which(executable)
        if not self.exe:
            raise GpuNotFoundError("nvidia-smi not found on PATH; is this a GPU node?")
        self._identity = parse_query_csv(self._run("--query-gpu=name,uuid,driver_version",
                                                   "--format=csv,noheader,nounits"),
                                         ["name", "uuid", "driver_version"])
        if not self._identity:
            raise GpuNotFoundError(f"nvidia-smi reports no GPU at index {index}")

    def _run(self, *args: str) -> str:
        proc = subprocess.run([self.exe, "-i", str(self.index), *args], capture_output=True, text=True, timeout=30)
        out = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            low = out.lower()
            what = f"nvidia-smi {' '.join(args)}"
            if "permission" in low or "insufficient" in low:
                raise GpuPermissionError(what)
            if "not supported" in low:
                raise GpuNotSupportedError(f"{what}: not supported by this GPU or driver")
            raise GpuError(f"{what} failed (exit {proc.returncode}): {out[:200]}")
        return proc.stdout

    def visible_devices(self) -> list[int]:
        """The indices ``nvidia-smi`` lists: the GPUs this job can see."""
        out = subprocess.run([self.exe, "--query-gpu=index", "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=30)
        return [int(x) for x in out.stdout.split() if x.strip().isdigit()] or [self.index]

    def device_name(self) -> str:
        return str(self._identity[0]["name"])

    def uuid(self) -> str:
        return str(self._identity[0]["uuid"])

    def driver_version(self) -> str | None:
        return str(self._identity[0]["driver_version"])

    def _clock_table(self) -> dict[int, list[int]]:
        parsed = parse_supported_clocks(self._run("-q", "-d", "SUPPORTED_CLOCKS"))
        if not parsed:
            raise GpuNotSupportedError("nvidia-smi lists no supported clocks for this GPU")
        return next(iter(parsed.values()))

    def supported_mem_clocks_mhz(self) -> list[int]:
        return sorted(self._clock_table(), reverse=True)

    def supported_sm_clocks_mhz(self, mem_clock_mhz: int | None = None) -> list[int]:
        table = self._clock_table()
        mem = mem_clock_mhz or max(table)
        if mem not in table:
            raise ClockError(f"memory clock {mem} MHz not supported; supported: {sorted(table, reverse=True)}")
        return table[mem]

    def lock_sm_clock(self, mhz: int, mem_mhz: int | None = None) -> None:
        try:
            self._run("-lgc", f"{mhz},{mhz}")
        except GpuNotSupportedError:
            mem = mem_mhz or self.supported_mem_clocks_mhz()[0]
            self._run("-ac", f"{mem},{mhz}")
        if mem_mhz:
            self._run("-lmc", f"{mem_mhz},{mem_mhz}")

    def reset_clocks(self) -> None:
        for flag in ("-rgc", "-rac", "-rmc"):
            try:
                self._run(flag)
            except GpuError:
                continue  # not every GPU supports every reset; the others still run

    def _query(self) -> dict:
        rows = parse_query_csv(self._run(f"--query-gpu={','.join(QUERY_FIELDS)}", "--format=csv,noheader,nounits"),
                               QUERY_FIELDS)
        if not rows:
            raise GpuError("nvidia-smi --query-gpu returned nothing")
        return rows[0]

    def throttle_reasons(self) -> str:
        value = self._query().get("clocks_throttle_reasons.active")
        return str(value) if value is not None else ""

    def sample(self) -> GpuSample:
        q = self._query()
        return GpuSample(mono_s=self.now(), power_w=q["power.draw"], sm_clock_mhz=q["clocks.sm"],
                         mem_clock_mhz=q["clocks.mem"], gpu_util_pct=q["utilization.gpu"],
                         mem_used_mib=q["memory.used"], temp_c=q["temperature.gpu"])
