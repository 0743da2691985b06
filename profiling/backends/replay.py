"""Serve recorded measurements as if a GPU produced them, so sweeps and models run on real numbers.

Two sources:

* the reference V100 DVFS tables (``shared/data/reference/*.csv``, one row per application and
  clock: mean power, run time, DCGM activity), chosen with ``--replay-app NAME``;
* a results directory written by this tool on a real GPU (``runs.csv`` + ``samples/``), e.g.
  the traces under ``tests/data/traces/``.

The launcher does not run the app under replay: for each (clock, run) it asks
``replay_run`` for the recorded run and writes it out in the usual results layout.

Recorded files are read defensively (``read_table``) because they are the one input a user
hands over whole: a file that is empty, binary or of another layout is one ``RecordError`` naming
it (the launcher says ``--replay-source``, power_modeling says the file), and rows a crash, a
second writer or a hand edit damaged are skipped and counted instead of failing the read. The
same reader serves ``power_modeling.io``, so both read a damaged file the same way. Everything
handed on is a plain Python value: the launcher writes it as JSON.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sd_energy_contract import reference
from sd_energy_contract.errors import InputError
from sd_energy_contract.files import complete_text
from sd_energy_contract.layout import RUNS_COLUMNS, SAMPLE_COLUMNS
from sd_energy_contract.reference import ACTIVITY_COLUMNS

from ..errors import ClockError, GpuNotFoundError
from .base import GpuBackend, GpuSample

# runs.csv columns that hold numbers: a row with anything else there was damaged, and is skipped.
RUNS_NUMERIC = frozenset({
    "sm_clock_target_mhz", "run_index", "warmup", "exit_code", "wall_s", "work_s", "energy_j", "energy_counter_j",
    "energy_integrated_j", "work_energy_j", "avg_power_w", "max_power_w", "idle_power_w", "work_avg_power_w", "images",
    "energy_per_image_j", "edp_js", "ed2p_js2", "sm_clock_mean_mhz", "sm_clock_readback_mhz", "clock_mismatch",
    "mem_clock_mean_mhz", "gpu_util_mean_pct", "temp_max_c", "samples", "flops_per_image"}) & set(RUNS_COLUMNS)
REFERENCE_NUMERIC = frozenset({"sm_app_clock", "power_usage", "run_time"})
# What a results directory needs to be replayed: the run's identity, its clock and its duration.
REPLAY_COLUMNS = ("run_id", "sm_clock_target_mhz", "status", "wall_s")
EXAMPLES = 3  # damaged lines quoted in a note; the count says how many there were


class RecordError(ValueError):
    """A recorded file that cannot be read as what it should be; the message names the file."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


@dataclass
class ReplayedRun:
    duration_s: float
    samples: list[GpuSample]            # mono_s relative to the run start
    activity: dict[str, float] = field(default_factory=dict)
    images: int | None = None
    app_config: dict = field(default_factory=dict)


def read_text(path: str | Path, what: str) -> str:
    """The file as text; ``RecordError`` for one that cannot be read, is empty or is binary.

    Checked before any parser sees it, because pandas answers a binary file with a decode error
    or, worse, a table of one garbage column.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecordError(path, f"cannot read ({exc.strerror or exc})") from None
    if not raw.strip():
        raise RecordError(path, f"empty file, not {what}")
    if b"\0" in raw:
        raise RecordError(path, f"binary data, not {what}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RecordError(path, f"not UTF-8 text (byte {exc.start}), not {what}") from None


def _is_number(text: str) -> bool:
    """Empty (missing) or what ``float`` reads: the values a numeric column may hold."""
    text = text.strip()
    if not text:
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def _lines(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:EXAMPLES]))
    return f"line{'s' if len(numbers) > 1 else ''} {shown}{', ...' if len(numbers) > EXAMPLES else ''}"


def read_table(path: str | Path, what: str, required: Collection[str] = (), numeric: Collection[str] = (),
               torn_last_line: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """A CSV file as a DataFrame, with its damaged rows skipped: (table, one note per kind of damage).

    Skipped, counted and named by line: a header line repeated in the middle (two writers appended
    to one file), a row with the wrong number of fields, a row with a non-numeric value in a
    ``numeric`` column. ``torn_last_line``: an unterminated last line is what a crash leaves in a
    line file (``runs.csv``), dropped without a note; a hand-made table may just lack the final
    newline, so there it is read like any other line. Raises ``RecordError`` for a file that is
    unreadable, empty, binary, not CSV, or lacks a ``required`` column.
    """
    path = Path(path)
    text = read_text(path, what)
    if torn_last_line:
        text = complete_text(text)
        if not text.strip():
            raise RecordError(path, f"no complete line (a torn header?), not {what}")
    reader = csv.reader(io.StringIO(text))
    try:
        header = next((row for row in reader if row), None)
        if header is None:
            raise RecordError(path, f"empty file, not {what}")
        missing = [c for c in required if c not in header]
        if missing:
            raise RecordError(path, f"not {what}: no column(s) {', '.join(missing)} "
                                    f"(its header: {','.join(header)[:80]})")
        check = [(i, name) for i, name in enumerate(header) if name in numeric]
        good, headers, width, values = [], [], [], []
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if row == header or (row[0] == header[0] and header[0].strip()):
                headers.append(line)
            elif len(row) != len(header):
                width.append(line)
            elif bad := next((f"{name}={row[i]!r}" for i, name in check if not _is_number(row[i])), None):
                values.append((line, bad))
            else:
                good.append(row)
    except csv.Error as exc:
        raise RecordError(path, f"not {what}: not CSV ({exc})") from None
    notes = []
    if headers:
        notes.append(f"{path}: skipped {len(headers)} repeated header line(s) ({_lines(headers)}): "
                     "two writers appended to one file?")
    if width:
        notes.append(f"{path}: skipped {len(width)} row(s) with a number of fields other than the header's "
                     f"{len(header)} ({_lines(width)})")
    if values:
        shown = ", ".join(f"line {n}: {v}" for n, v in values[:EXAMPLES])
        notes.append(f"{path}: skipped {len(values)} row(s) with non-numeric values in numeric columns "
                     f"({shown}{', ...' if len(values) > EXAMPLES else ''})")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *good])
    try:
        table = pd.read_csv(io.StringIO(buf.getvalue()))
    except (ValueError, pd.errors.ParserError) as exc:  # unlikely once every row has the header's width
        raise RecordError(path, f"not {what}: {str(exc).splitlines()[0]}") from None
    for _, name in check:
        if name in table and table[name].dtype == object:
            table[name] = pd.to_numeric(table[name], errors="coerce")
    return table, notes


def is_reference_csv(path: Path) -> bool:
    """Whether ``path`` is a CSV whose header has the reference columns (False for anything unreadable)."""
    if Path(path).suffix != ".csv":
        return False
    try:
        header = next(csv.reader(io.StringIO(read_text(path, "a reference CSV"))), [])
    except (RecordError, csv.Error):
        return False
    return reference.is_reference_header(header)


def read_reference(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The reference table with project names and units, and notes on the rows skipped as damaged.

    Energy is recomputed as P*T (see the data's README). ``RecordError`` for a file that is not a
    reference CSV, names the columns it needs.
    """
    df, notes = read_table(path, "a reference CSV", sorted(reference.REQUIRED), REFERENCE_NUMERIC,
                           torn_last_line=False)
    df = df.drop(columns=[c for c in df.columns if c.startswith(reference.DROPPED_PREFIXES) or c in reference.DROPPED])
    df = df.rename(columns=reference.RENAMES)
    missing = df[["sm_clock_mhz", "avg_power_w", "work_s"]].isna().any(axis=1) | df["workload"].isna()
    if missing.any():
        notes.append(f"{path}: skipped {int(missing.sum())} row(s) without an application, clock, power or run time")
        df = df[~missing].reset_index(drop=True)
    if df.empty:
        raise RecordError(path, "no usable row (every row was damaged or incomplete)" if notes else "no data rows")
    df["energy_j"] = df["avg_power_w"] * df["work_s"]
    return df, notes


def load_reference(path: Path) -> pd.DataFrame:
    """The reference table with project names and units (energy recomputed as P*T, see its README)."""
    return read_reference(path)[0]


def _plain(value):
    """A numpy scalar as the Python value it holds (json cannot write numpy integers)."""
    return value.item() if hasattr(value, "item") else value


def _opt_float(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def read_samples(path: Path) -> tuple[list[GpuSample], list[str]]:
    """One recorded run's samples file as ``GpuSample``s (numbers as Python floats, None where missing)."""
    table, notes = read_table(path, "a samples file", ("mono_s", "power_w"), SAMPLE_COLUMNS)
    table = table[table["mono_s"].notna()]
    if table.empty:
        raise RecordError(path, "no sample rows")
    cols = [c for c in SAMPLE_COLUMNS if c in table]
    samples = [GpuSample(**{c: _opt_float(v) for c, v in zip(cols, values, strict=True)})
               for values in table[cols].itertuples(index=False, name=None)]
    return samples, notes


def _replay_error(exc: RecordError, hint: str = "") -> InputError:
    return InputError("--replay-source", str(exc.path), exc.problem + hint)


class ReplayGpu(GpuBackend):
    name = "replay"
    replays = True

    def __init__(self, source: str | Path, app: str | None = None, index: int = 0, samples_per_run: int = 20):
        super().__init__(index)
        self.source = Path(source)
        if not self.source.exists():
            raise GpuNotFoundError(f"--replay-source {self.source}: no such file or directory")
        self.samples_per_run = samples_per_run
        self._clock: int | None = None
        self._traces: dict[str, list[GpuSample]] = {}
        if self.source.is_dir():
            self._open_results_dir(app)
        else:
            self._open_reference(app)

    def _open_reference(self, app: str | None) -> None:
        try:
            table, notes = read_reference(self.source)
        except RecordError as exc:
            raise _replay_error(exc, "; --replay-source takes a reference CSV or a results directory") from None
        apps = sorted(table["workload"].astype(str).unique())
        if app not in apps:
            raise GpuNotFoundError(f"--replay-app {app!r} is not in {self.source.name}; it has {', '.join(apps)}")
        _warn(notes)
        self.app = app
        self._table = table[table["workload"].astype(str) == app].set_index("sm_clock_mhz").sort_index()
        self._gpu_name = "Tesla V100 (reference data)"

    def _open_results_dir(self, app: str | None) -> None:
        """Every successful locked-clock run with a readable samples file, read now: a damaged file is
        found before the sweep writes anything, and skipped with a note rather than failing mid-sweep."""
        runs_path = self.source / "runs.csv"
        if not runs_path.is_file():
            raise InputError("--replay-source", str(self.source), "a directory without runs.csv, so not a results "
                             "directory (give one written by the launcher, or a reference CSV)")
        try:
            runs, notes = read_table(runs_path, "a runs.csv", REPLAY_COLUMNS, RUNS_NUMERIC)
        except RecordError as exc:
            raise _replay_error(exc) from None
        warmup = runs["warmup"].fillna(0) if "warmup" in runs else pd.Series(0, index=runs.index)
        runs = runs[(runs["status"].astype(str) == "ok") & (warmup == 0) & runs["sm_clock_target_mhz"].gt(0)
                    & runs["wall_s"].gt(0)]
        unreadable = []
        for rid in runs["run_id"].astype(str).unique():
            try:
                self._traces[rid], more = read_samples(self.source / "samples" / f"{rid}.csv")
                notes += more
            except RecordError as exc:
                unreadable.append(exc.path.name if exc.path.parent.name == "samples" else str(exc.path))
        if unreadable:
            shown = ", ".join(unreadable[:EXAMPLES]) + (", ..." if len(unreadable) > EXAMPLES else "")
            notes.append(f"{self.source}/samples: skipped {len(unreadable)} run(s) whose samples file is missing "
                         f"or unreadable ({shown})")
        runs = runs[runs["run_id"].astype(str).isin(self._traces)]
        if runs.empty:
            raise InputError("--replay-source", str(self.source), "no successful locked-clock run with a readable "
                             "samples file to replay" + (f" ({'; '.join(notes)})" if notes else ""))
        _warn(notes)
        self._runs = runs
        self._gpu_name = str(runs["gpu_name"].iloc[0]) if "gpu_name" in runs else "recorded GPU"
        self.app = app or "recorded"
        self._table = None

    def device_name(self) -> str:
        return f"{self._gpu_name} (replay of {self.source.name})"

    def uuid(self) -> str:
        return f"REPLAY-{self.source.stem}-{self.app}"

    def supported_sm_clocks_mhz(self, mem_clock_mhz: int | None = None) -> list[int]:
        if self._table is not None:
            clocks = self._table.index
        else:
            clocks = self._runs["sm_clock_target_mhz"].dropna()
        return sorted({int(c) for c in clocks}, reverse=True)

    def lock_sm_clock(self, mhz: int, mem_mhz: int | None = None) -> None:
        if mhz not in self.supported_sm_clocks_mhz():
            raise ClockError(f"{mhz} MHz was not recorded in {self.source}")
        self._clock = mhz

    def reset_clocks(self) -> None:
        self._clock = None

    def child_env(self) -> dict[str, str]:
        return {}  # nothing runs: the recorded runs are served

    def sample(self) -> GpuSample:
        return GpuSample(mono_s=self.now(), sm_clock_mhz=self._clock)

    def replay_run(self, run_index: int = 0) -> ReplayedRun:
        """The recorded run for the locked clock (repeats cycle through the recorded ones), in plain Python types."""
        clock = self._clock or self.supported_sm_clocks_mhz()[0]
        if self._table is not None:
            rows = self._table.loc[[clock]]  # a table with repeats (run_index) has several rows per clock
            row = rows.iloc[run_index % len(rows)]
            duration, power = float(row["work_s"]), float(row["avg_power_w"])
            activity = {v: x for v in ACTIVITY_COLUMNS.values() if v in row and (x := _opt_float(row[v])) is not None}
            n = self.samples_per_run
            util = _opt_float(row.get("gpu_utilization"))
            samples = [GpuSample(mono_s=duration * i / (n - 1), power_w=power, sm_clock_mhz=clock,
                                 gpu_util_pct=util, extra=dict(activity)) for i in range(n)]
            return ReplayedRun(duration, samples, activity, None, {"workload": self.app})
        runs = self._runs[self._runs["sm_clock_target_mhz"] == clock]
        if "run_index" in runs:
            runs = runs.sort_values("run_index")
        rec = runs.iloc[run_index % len(runs)]
        trace = self._traces[str(rec["run_id"])]
        t0 = trace[0].mono_s
        samples = [GpuSample(**{**s.__dict__, "mono_s": s.mono_s - t0, "extra": {}}) for s in trace]
        app_cfg = {c[4:]: _plain(rec[c]) for c in runs.columns if c.startswith("app_") and pd.notna(rec[c])}
        images = int(rec["images"]) if "images" in rec and pd.notna(rec["images"]) else None
        return ReplayedRun(float(rec["wall_s"]), samples, {}, images, app_cfg)


def _warn(notes: list[str]) -> None:
    """Damaged rows skipped while opening a source: said once, before the sweep starts."""
    for note in notes:
        print(f"warning: --replay-source {note}", file=sys.stderr)
