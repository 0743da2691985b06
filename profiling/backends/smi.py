"""NVIDIA GPUs through the ``nvidia-smi`` CLI, for sites without NVML Python bindings.

Every call is an argument list (never a shell). Samples come from ONE streaming process,
``nvidia-smi -i <idx> --query-gpu=... --format=csv,noheader,nounits -lms <interval>``, read by a
thread (``stream.LineStream``); ``sample()`` returns its newest line. Control and identity
queries are one-off calls. nvidia-smi has no energy counter field, so energy is integrated from
power by the monitor.

Power: ``power.draw`` is a 1 s average on Ampere-and-newer GPUs other than GA100 (H100, H200),
instantaneous on older ones (NVML API reference, nvmlDeviceGetPowerUsage). Newer drivers also
know ``power.draw.instant`` and ``power.draw.average``; an older driver rejects the whole query
for a field it does not know, so each is probed once at start. Where the GPU reports them,
``power_w`` is the instantaneous reading and ``power_avg_w`` the average; otherwise ``power_w`` is
``power.draw`` and ``power_source`` says what that is for this GPU's architecture
(``configs/gpus.yaml``, ``sensors``).
"""

from __future__ import annotations

import shutil
import subprocess

from sd_energy_contract.gpus import detect_gpu_type, sensor_model

from ..errors import ClockError, GpuError, GpuNotFoundError, GpuNotSupportedError, GpuPermissionError
from ..smi_parse import parse_mask, parse_query_csv, parse_query_line, parse_supported_clocks
from .base import GpuBackend, GpuSample
from .stream import LineStream

QUERY_FIELDS = ["power.draw", "clocks.sm", "clocks.mem", "utilization.gpu", "memory.used", "temperature.gpu",
                "clocks_throttle_reasons.active"]
# Asked for where the driver knows them (probed once: an unknown field fails the whole query).
INSTANT_FIELD, AVERAGE_FIELD = "power.draw.instant", "power.draw.average"
OPTIONAL_POWER_FIELDS = [INSTANT_FIELD, AVERAGE_FIELD]
THROTTLE_FIELD = "clocks_throttle_reasons.active"
CSV = "--format=csv,noheader,nounits"
DEFAULT_INTERVAL_MS = 50  # the launcher's default --sampling-interval


class SmiGpu(GpuBackend):
    name = "smi"
    power_update_period_s = 0.1  # Yang et al. SC'24: A100/H100 power updates every 100 ms

    def __init__(self, index: int = 0, executable: str = "nvidia-smi", interval_ms: float = DEFAULT_INTERVAL_MS):
        super().__init__(index)
        self.exe = shutil.which(executable)
        if not self.exe:
            raise GpuNotFoundError("nvidia-smi not found on PATH; is this a GPU node?")
        self._identity = parse_query_csv(self._run("--query-gpu=name,uuid,driver_version", CSV),
                                         ["name", "uuid", "driver_version"])
        if not self._identity:
            raise GpuNotFoundError(f"nvidia-smi reports no GPU at index {index}")
        self.interval_ms = max(1, int(round(interval_ms)))
        self.power_fields = self._probe_power_fields()
        self.fields = QUERY_FIELDS + self.power_fields
        # What power.draw is on this GPU: the architecture's documented reading (unknown: averaged,
        # the base class's cautious default).
        reading = sensor_model(detect_gpu_type(self.device_name()) or "").get("power_usage_reading")
        self.draw_reading = reading if reading in ("instantaneous", "averaged") else "averaged"
        self.power_source = "instantaneous" if INSTANT_FIELD in self.power_fields else self.draw_reading
        self._stream: LineStream[dict] | None = None

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

    def _query_once(self, fields: list[str]) -> dict | None:
        """One ``--query-gpu`` call; None when the driver rejects a field or prints something else."""
        try:
            out = self._run(f"--query-gpu={','.join(fields)}", CSV)
        except GpuError:
            return None
        rows = parse_query_csv(out, fields)
        return rows[0] if rows else None

    def _probe_power_fields(self) -> list[str]:
        """The optional power fields this driver knows and this GPU reports (a number, not [N/A])."""
        both = self._query_once(OPTIONAL_POWER_FIELDS)
        if both is not None:
            return [f for f in OPTIONAL_POWER_FIELDS if both[f] is not None]
        out = []
        for f in OPTIONAL_POWER_FIELDS:
            row = self._query_once([f])
            if row is not None and row[f] is not None:
                out.append(f)
        return out

    def visible_devices(self) -> list[int]:
        """The indices ``nvidia-smi`` lists: the GPUs this job can see."""
        out = subprocess.run([self.exe, "--query-gpu=index", CSV], capture_output=True, text=True, timeout=30)
        return [int(x) for x in out.stdout.split() if x.strip().isdigit()] or [self.index]

    def device_name(self) -> str:
        return str(self._identity[0]["name"])

    def uuid(self) -> str:
        return str(self._identity[0]["uuid"])

    def driver_version(self) -> str | None:
        return str(self._identity[0]["driver_version"])

    def mig_mode(self) -> str | None:
        """``Enabled``/``Disabled`` (``mig.mode.current``), None where the GPU or driver has no MIG."""
        row = self._query_once(["mig.mode.current"])
        value = row.get("mig.mode.current") if row else None
        return str(value) if value is not None else None

    # ------------------------------------------------------------------ clocks
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
        """``-lgc``; where locked clocks are not supported, application clocks (``-ac``)."""
        try:
            self._run("-lgc", f"{mhz},{mhz}")
        except GpuNotSupportedError:
            self.set_application_clocks(mhz, mem_mhz)
            return
        except GpuPermissionError as locked_refused:
            # Non-root: locked clocks need root, application clocks only an admin's `nvidia-smi -acp 0`.
            try:
                self.set_application_clocks(mhz, mem_mhz)
            except GpuPermissionError:
                raise locked_refused from None
            return
        self.clock_method = "locked"
        if mem_mhz:
            self._run("-lmc", f"{mem_mhz},{mem_mhz}")

    def set_application_clocks(self, mhz: int, mem_mhz: int | None = None) -> None:
        """Application clocks only (``-ac MEM,SM``; ``--clock-control application``)."""
        mem = mem_mhz or self.supported_mem_clocks_mhz()[0]
        self._run("-ac", f"{mem},{mhz}")
        self.clock_method = "application"

    def applications_clock_mhz(self) -> int | None:
        """The application SM clock set now (``clocks.applications.graphics``: what SLURM's ``--gpu-freq``
        sets), read back by ``--clock-control slurm``; None where the driver cannot say."""
        row = self._query_once(["clocks.applications.graphics"])
        value = row.get("clocks.applications.graphics") if row else None
        return int(value) if isinstance(value, float) else None

    def reset_clocks(self) -> None:
        for flag in ("-rgc", "-rac", "-rmc"):
            try:
                self._run(flag)
            except GpuError:
                continue  # not every GPU supports every reset; the others still run

    # ------------------------------------------------------------------ the stream
    def stream_argv(self) -> list[str]:
        return [self.exe, "-i", str(self.index), f"--query-gpu={','.join(self.fields)}", CSV, "-lms",
                str(self.interval_ms)]

    def set_sampling_interval(self, interval_s: float) -> None:
        """Stream at ``interval_s`` (the sampler's interval): a running stream is restarted at the new rate."""
        ms = max(1, int(round(interval_s * 1000)))
        if ms == self.interval_ms:
            return
        self.interval_ms = ms
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _latest(self) -> dict:
        if self._stream is None:
            fields = list(self.fields)
            self._stream = LineStream(self.stream_argv(), lambda line: parse_query_line(line, fields),
                                      f"nvidia-smi stream of GPU {self.index}",
                                      stale_after_s=max(5.0, 20 * self.interval_ms / 1000))
        return self._stream.latest()[0]

    @property
    def stream_starts(self) -> int:
        """Streaming processes started so far: 1 in a healthy run (a restart adds one)."""
        return self._stream.starts if self._stream is not None else 0

    def throttle_reasons(self) -> str:
        value = self._latest().get(THROTTLE_FIELD)
        return str(value) if value is not None else ""

    def sample(self) -> GpuSample:
        q = self._latest()
        instant, average, draw = q.get(INSTANT_FIELD), q.get(AVERAGE_FIELD), q["power.draw"]
        power = instant if instant is not None else draw
        if average is None and instant is not None and self.draw_reading == "averaged":
            average = draw  # power.draw is the 1 s average on this GPU
        return GpuSample(mono_s=self.now(), power_w=power, power_avg_w=average, sm_clock_mhz=q["clocks.sm"],
                         mem_clock_mhz=q["clocks.mem"], gpu_util_pct=q["utilization.gpu"],
                         mem_used_mib=q["memory.used"], temp_c=q["temperature.gpu"],
                         throttle_mask=parse_mask(q.get(THROTTLE_FIELD)))

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
