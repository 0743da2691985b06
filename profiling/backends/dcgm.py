"""DCGM profiling counters through ``dcgmi dmon``, for the activity features power models need.

``dcgmi dmon -i <gpu> -e <field ids> -d <ms>`` streams one line per interval (``-d`` is also the
interval DCGM watches the fields at); a reader thread (``stream.LineStream``) keeps the newest line
and ``sample()`` returns it. Clock control and identity go through NVML (or nvidia-smi when the
bindings are missing), since DCGM has no locked-clock call of its own.

Time: ``dmon`` prints no timestamps (its rows are the entity and the values: DCGM's
``dcgmi/DeviceMonitor.cpp``, ``PrintMetricsRow``), so a reading is timed by its arrival and
returned as the value at the time it is asked for, at most one ``-d`` interval old.

Power: field 155 (``DCGM_FI_DEV_POWER_USAGE``) is a 1 s average on H100/H200; field 157
(``DCGM_FI_DEV_POWER_USAGE_INSTANT``) is the instantaneous reading. Both are watched: ``power_w``
is 157 where the GPU reports it, ``power_avg_w`` is 155. A DCGM too old to know 157 (``invalid
field ID``) is asked again without it.

Profiling fields (1001-1012, ``DCGM_FI_PROF_*``) need a GPU and a host engine that can watch them;
where they cannot (``Error setting watches``: profiling not supported, another profiler holds the
counters, multi-pass, module not loaded) opening the backend fails with one line saying so.
"""

from __future__ import annotations

import shutil

from sd_energy_contract.gpus import detect_gpu_type, sensor_model

from ..errors import GpuError, GpuNotFoundError
from .base import GpuBackend, GpuSample
from .stream import LineStream

# DCGM field id -> our column name.
FIELDS = {155: "power_w", 156: "energy_mj", 100: "sm_clock_mhz", 101: "mem_clock_mhz", 203: "gpu_util_pct",
          252: "mem_used_mib", 150: "temp_c", 1002: "sm_active", 1003: "sm_occupancy", 1004: "tensor_active",
          1005: "dram_active", 1006: "fp64_active", 1007: "fp32_active", 1008: "fp16_active"}
INSTANT_POWER_FIELD = 157  # DCGM_FI_DEV_POWER_USAGE_INSTANT (dcgm_fields.h)
INSTANT_COLUMN = "power_instant_w"
CORE = {"power_w", "energy_mj", "sm_clock_mhz", "mem_clock_mhz", "gpu_util_pct", "mem_used_mib", "temp_c"}
PROF_FIELDS = [f for f in FIELDS if 1001 <= f <= 1012]
DEFAULT_INTERVAL_MS = 100
# What dcgmi prints when the watch cannot be set up (DeviceMonitor.cpp, dcgm_errors.c errorString).
WATCH_ERROR = "error setting watches"
INVALID_FIELD = "invalid field id"


WIDTH = "__values__"  # key of what _parse_stream_line returns for a data line of another width


def parse_dmon_line(line: str, gpu_index: int, columns: tuple[str, ...] | None = None) -> dict[str, float | None] | None:
    """One ``GPU 0  55.1  12345 ...`` data line -> {column: value}; headers, other GPUs and lines of
    another width -> None. ``columns``: the names of the fields asked for, in order (default ``FIELDS``)."""
    columns = tuple(FIELDS.values()) if columns is None else columns
    values = _values(line, gpu_index)
    if values is None or len(values) != len(columns):
        return None
    out: dict[str, float | None] = {}
    for name, raw in zip(columns, values, strict=True):
        try:
            out[name] = float(raw)
        except ValueError:
            out[name] = None  # N/A
    return out


def _values(line: str, gpu_index: int) -> list[str] | None:
    parts = line.split()
    if len(parts) < 2 or parts[0] != "GPU" or parts[1] != str(gpu_index):
        return None
    return parts[2:]


def _parse_stream_line(line: str, gpu_index: int, columns: tuple[str, ...]) -> dict | None:
    """Like ``parse_dmon_line``, but a data line of this GPU with another number of values than
    fields asked for comes back as ``{WIDTH: n}``, so the start-up sees it at once instead of waiting
    for a reading that will never parse (an older DCGM that leaves out a field it does not know)."""
    row = parse_dmon_line(line, gpu_index, columns)
    if row is None and (values := _values(line, gpu_index)) is not None:
        return {WIDTH: len(values)}
    return row


def watch_error(messages: list[str]) -> str | None:
    """DCGM's own reason, where the lines dcgmi printed say it could not watch the fields."""
    for line in messages:
        if WATCH_ERROR in line.lower():
            return line.split(":", 1)[1].strip() if ":" in line else line
    return None


class DcgmGpu(GpuBackend):
    name = "dcgm"
    power_update_period_s = 0.1  # dmon's -d interval (100 ms by default) bounds what it can show
    energy_update_period_s = 0.1

    def __init__(self, index: int = 0, interval_ms: float = DEFAULT_INTERVAL_MS):
        super().__init__(index)
        exe = shutil.which("dcgmi")
        if not exe:
            raise GpuNotFoundError("dcgmi not found on PATH: install DCGM or use --profiling-tool nvml")
        self.exe = exe
        self.interval_ms = max(1, int(round(interval_ms)))
        from . import open_backend

        try:
            self.control = open_backend("nvml", index)
        except GpuError:
            self.control = open_backend("smi", index)
        self.field_ids = [*FIELDS, INSTANT_POWER_FIELD]
        self._stream: LineStream[dict] | None = None
        try:
            self._start_stream()
        except BaseException:
            self.control.close()
            raise
        first = (self._stream.peek() if self._stream is not None else None) or {}
        reading = sensor_model(detect_gpu_type(self.device_name()) or "").get("power_usage_reading")
        self.power_source = ("instantaneous" if first.get(INSTANT_COLUMN) is not None
                             else reading if reading in ("instantaneous", "averaged") else "averaged")

    # ------------------------------------------------------------------ the stream
    def stream_argv(self) -> list[str]:
        return [self.exe, "dmon", "-i", str(self.index), "-e", ",".join(map(str, self.field_ids)), "-d",
                str(self.interval_ms)]

    def _columns(self) -> tuple[str, ...]:
        return tuple(INSTANT_COLUMN if f == INSTANT_POWER_FIELD else FIELDS[f] for f in self.field_ids)

    def _start_stream(self) -> None:
        """Start ``dmon`` and wait for its first reading; a DCGM without field 157 is asked again without it."""
        columns = self._columns()
        stream = LineStream(self.stream_argv(), lambda line: _parse_stream_line(line, self.index, columns),
                            f"dcgmi dmon of GPU {self.index}", stale_after_s=max(5.0, 20 * self.interval_ms / 1000))
        stream.start()
        got = stream.wait_for_reading()
        width = (stream.peek() or {}).get(WIDTH) if got else None
        if got and width is None:
            self._stream = stream
            return
        stream.close()
        said = list(stream.messages)
        reason = watch_error(said)
        if reason is not None:
            raise GpuError(f"dcgmi dmon cannot watch the DCGM fields {','.join(map(str, self.field_ids))} on GPU "
                           f"{self.index}: {reason}. The profiling fields ({PROF_FIELDS[0]}-{PROF_FIELDS[-1]}) "
                           "need a data-center GPU, the DCGM profiling module and no other profiler (dcgm-exporter, "
                           "Nsight) holding the counters; use --profiling-tool nvml to measure without activity columns")
        unknown_field = width is not None or any(INVALID_FIELD in m.lower() for m in said)
        if INSTANT_POWER_FIELD in self.field_ids and unknown_field:
            self.field_ids = list(FIELDS)  # a DCGM that does not know field 157
            self._start_stream()
            return
        if width is not None:
            raise GpuError(f"dcgmi dmon prints {width} values per line where {len(columns)} fields were asked for")
        code = stream.returncode
        how = f"exited with code {code}" if code is not None else "produced no data in 10 s"
        tail = f" (it said: {' | '.join(said[-3:])})" if said else ""
        raise GpuError(f"dcgmi dmon {how}: is the DCGM host engine (nv-hostengine) running?{tail}")

    def set_sampling_interval(self, interval_s: float) -> None:
        """Watch and print at ``interval_s`` (``-d``): the stream is restarted at the new rate."""
        ms = max(1, int(round(interval_s * 1000)))
        if ms == self.interval_ms:
            return
        self.interval_ms = ms
        if self._stream is not None:
            self._stream.close()
        self._start_stream()

    @property
    def stream_starts(self) -> int:
        return self._stream.starts if self._stream is not None else 0

    def _latest(self) -> dict:
        if self._stream is None:
            raise GpuError("dcgmi dmon stream is closed")
        row = self._stream.latest()[0]
        if WIDTH in row:
            raise GpuError(f"dcgmi dmon now prints {row[WIDTH]} values per line where {len(self.field_ids)} fields "
                           "were asked for")
        return row

    # ------------------------------------------------------------------ identity and control (NVML or nvidia-smi)
    def device_name(self) -> str:
        return self.control.device_name()

    def uuid(self) -> str:
        return self.control.uuid()

    def driver_version(self) -> str | None:
        return self.control.driver_version()

    def mig_mode(self) -> str | None:
        fn = getattr(self.control, "mig_mode", None)
        return fn() if fn is not None else None

    def supported_sm_clocks_mhz(self, mem_clock_mhz: int | None = None) -> list[int]:
        return self.control.supported_sm_clocks_mhz(mem_clock_mhz)

    def supported_mem_clocks_mhz(self) -> list[int]:
        return self.control.supported_mem_clocks_mhz()

    def lock_sm_clock(self, mhz: int, mem_mhz: int | None = None) -> None:
        self.control.lock_sm_clock(mhz, mem_mhz)
        self.clock_method = getattr(self.control, "clock_method", self.clock_method)

    def set_application_clocks(self, mhz: int, mem_mhz: int | None = None) -> None:
        self.control.set_application_clocks(mhz, mem_mhz)
        self.clock_method = "application"

    def applications_clock_mhz(self) -> int | None:
        return self.control.applications_clock_mhz()

    def reset_clocks(self) -> None:
        self.control.reset_clocks()

    def visible_devices(self) -> list[int]:
        return self.control.visible_devices()

    def throttle_reasons(self) -> str:
        return self.control.throttle_reasons()

    # ------------------------------------------------------------------ measurements
    def energy_mj(self) -> float | None:
        return self._latest().get("energy_mj")

    def sample(self) -> GpuSample:
        row = dict(self._latest())
        instant = row.pop(INSTANT_COLUMN, None)
        core = {k: row.get(k) for k in CORE}
        avg = None
        if instant is not None:
            core["power_w"], avg = instant, core["power_w"]
        return GpuSample(mono_s=self.now(), power_avg_w=avg, **core,
                         extra={k: v for k, v in row.items() if k not in CORE})

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self.control.close()
