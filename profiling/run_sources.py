"""Where each run of a sweep comes from. The driver (``profiling.driver``) locks the clock and
measures; a run source only produces the run:

* ``AppProcess``: the app (any program) as a child process, one per run (the default). Every run
  reloads the model, but any executable can be swept and a crash cannot take the launcher down.
* ``InProcess``: a workload loaded once in this process (``launch.sh --in-process``, or
  ``profiling.sweep(fn, ...)``): no process start and no model load per run. Only this source can
  follow the app's phases with the clock (``--phase-clocks``), since it sees every phase boundary
  as it happens.
* ``Replay``: recorded runs (reference tables or a results directory) served as if measured.

All three leave the same files behind (events, metrics JSON), so one function builds the row.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

from sd_energy_contract import env
from sd_energy_contract.errors import InputError
from sd_energy_contract.files import append_line, write_atomic
from sd_energy_contract.layout import RUNNING
from sd_energy_contract.phases import BATCH, CLOCKED_PHASES, SAVE, TEXT_ENCODE, WARMUP
from sd_energy_contract.workload import WORKLOADS_GROUP, RunContext, Workload

from .backends.base import GpuBackend, GpuSample
from .clocks import ClockGuard, Interrupted
from .planning import RunSpec


@dataclass(frozen=True)
class RunFiles:
    events: Path
    metrics: Path
    out: Path
    err: Path


@dataclass
class RunOutcome:
    status: str                          # ok, failed, timeout, oom, crashed, interrupted
    exit_code: int | None
    t_start: float
    t_end: float
    samples: list[GpuSample] | None = None   # a source that brings its own (replay); else the monitor's
    stopped_by: Interrupted | None = None    # re-raised by the driver once the row is written
    phase_clocks: dict | None = None         # the policy and its switches, where one was followed


class RunSource(Protocol):
    mode: str              # the rows' ``mode`` column
    measured: bool         # False: the run brings its own samples (nothing to sample live)

    def run(self, spec: RunSpec, files: RunFiles) -> RunOutcome: ...


# --------------------------------------------------------------------------- the app as a process

class AppProcess:
    """The app as a child process in its own session, which dies with the launcher.

    Whatever kills the launcher (SIGKILL included), the kernel sends the app SIGKILL
    (``PR_SET_PDEATHSIG``), so a resumed sweep never measures a leftover app beside its own. Each
    running app is also recorded in ``running/<run_id>.json`` (pid and start time), so a resumed
    launch can end what the app itself had started (``end_leftovers``).
    """

    mode = "process"
    measured = True

    def __init__(self, command: list[str], timeout_s: float, child_env: dict[str, str], running_dir: Path | None = None):
        self.command = command
        self.timeout_s = timeout_s
        self.child_env = child_env
        self.running_dir = running_dir

    def _env(self, spec: RunSpec, files: RunFiles) -> dict[str, str]:
        return {**os.environ, **self.child_env, env.EVENTS_FILE: str(files.events), env.METRICS_FILE: str(files.metrics),
                env.RUN_ID: spec.run_id, env.SM_CLOCK_MHZ: str(spec.clock or "")}

    def run(self, spec: RunSpec, files: RunFiles) -> RunOutcome:
        status, code, stopped_by, proc = "ok", None, None, None
        with open(files.out, "w") as out, open(files.err, "w") as err:
            t_start = time.monotonic()
            record = None
            try:
                proc = subprocess.Popen(self.command, stdout=out, stderr=err, env=self._env(spec, files),
                                        start_new_session=True, preexec_fn=_die_with(os.getpid()))
                record = _record_running(self.running_dir, spec.run_id, proc.pid)
                code = proc.wait(timeout=self.timeout_s)
            except OSError as exc:  # the program could not start: a failed run, the sweep goes on
                status = "failed"
                err.write(f"cannot start {self.command[0]}: {exc}\n")
            except subprocess.TimeoutExpired:
                status = "timeout"
                _kill_group(proc)
            except Interrupted as exc:
                status, stopped_by = "interrupted", exc
                _kill_group(proc)
            finally:
                t_end = time.monotonic()
                if record is not None:
                    record.unlink(missing_ok=True)
        if stopped_by is not None:
            return RunOutcome(status, proc.returncode if proc else None, t_start, t_end, stopped_by=stopped_by)
        if status == "ok" and code not in (0, None):
            text = files.err.read_text(errors="replace")[-20000:]
            if "OutOfMemoryError" in text or "out of memory" in text.lower():
                status = "oom"
            elif code < 0:
                status = "crashed"
            else:
                status = "failed"
        return RunOutcome(status, code, t_start, t_end)


def _kill_group(proc: subprocess.Popen | None) -> None:
    """End the app, its process group and every descendant (helpers it started with ``setsid`` left
    the group; they are found through /proc before the app dies and they lose their parent)."""
    if proc is None:
        return
    others = [p for p in descendants(proc.pid)]
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in others:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- no orphans

_PR_SET_PDEATHSIG = 1
try:
    _LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover - no C library to call
    _LIBC = None


def _die_with(parent: int):
    """A ``preexec_fn``: ask the kernel to SIGKILL the child when the launcher dies (Linux). If the
    launcher died already, between fork and here, the child ends itself."""

    def preexec() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(1)

    return preexec


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with the pid it
    names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2:].split()[19])


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc; [] where there is none)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _record_running(running_dir: Path | None, run_id: str, pid: int) -> Path | None:
    if running_dir is None:
        return None
    path = running_dir / f"{run_id}.json"
    write_atomic(path, json.dumps({"pid": pid, "start_ticks": _start_ticks(pid)}))
    return path


def end_leftovers(results_path: Path) -> list[str]:
    """End app processes (and their descendants) a killed launcher left running in this results
    directory, before their runs are redone; returns one line per process ended."""
    lines = []
    for record in sorted((Path(results_path) / RUNNING).glob("*.json")):
        try:
            rec = json.loads(record.read_text())
            pid, ticks = int(rec["pid"]), rec.get("start_ticks")
        except (OSError, ValueError, KeyError, TypeError):
            record.unlink(missing_ok=True)
            continue
        if ticks is not None and _start_ticks(pid) == ticks:
            victims = [pid, *descendants(pid)]
            for victim in victims:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(victim, signal.SIGKILL)
            lines.append(f"ended {len(victims)} leftover process(es) of run {record.stem} (app pid {pid}) "
                         "before redoing it")
        record.unlink(missing_ok=True)
    return lines


# --------------------------------------------------------------------------- a workload in this process

def load_workload(name: str, argv: list[str]) -> Workload:
    """The in-process workload ``name`` (entry-point group ``sd_energy.workloads``) built from ``argv``."""
    ep = next(iter(entry_points(group=WORKLOADS_GROUP, name=name)), None)
    if ep is None:
        have = sorted({e.name for e in entry_points(group=WORKLOADS_GROUP)})
        raise InputError("--in-process", name, f"no workload of that name is registered in {WORKLOADS_GROUP!r} "
                         f"({', '.join(have) or 'none'}); run `pip install -e .` in the repository")
    return ep.load()(argv)


class PhaseClocks:
    """Follows the app's phases with the clock: at each phase start, the phase's clock (or the run's).

    The switch happens before the phase's start time is taken, so it is part of no phase. Clocks
    change only where the wanted clock differs from the current one (consecutive denoising steps
    switch once), and the switch is timed up to the clock read back, which is recorded with the
    phase in the events file (``{"event": "clock", ...}``; readers of spans ignore it).
    """

    # Phases whose start sets the clock: the clocked ones, and those that hand back the run's clock.
    FOLLOWED = frozenset({*CLOCKED_PHASES.values(), TEXT_ENCODE, BATCH, WARMUP, SAVE})

    def __init__(self, guard: ClockGuard, backend: GpuBackend, policy: dict[str, int]):
        self.guard, self.backend, self.policy = guard, backend, policy
        self.base: int | None = None
        self.current: int | None = None
        self.events: Path | None = None
        self.switches: list[dict] = []

    def begin(self, base: int | None, events: Path) -> None:
        self.base, self.current, self.events, self.switches = base, base, events, []

    def on_phase(self, event: str, phase: str) -> None:
        if event != "start" or phase not in self.FOLLOWED:
            return
        self._set(self.policy.get(phase, self.base), phase)

    def end(self) -> None:
        """Back to the run's clock, so the next run starts where the sweep put it."""
        self._set(self.base, "end")

    def _set(self, mhz: int | None, phase: str) -> None:
        if mhz == self.current:
            return
        t0 = time.monotonic()
        self.guard.switch(mhz)
        readback = self.backend.sample().sm_clock_mhz
        t1 = time.monotonic()
        self.current = mhz
        rec = {"event": "clock", "phase": phase, "mhz": mhz, "readback_mhz": readback, "mono_s": t1,
               "latency_s": round(t1 - t0, 6)}
        self.switches.append(rec)
        if self.events is not None:
            append_line(self.events, json.dumps(rec), fsync=False)

    def summary(self) -> dict:
        lat = [s["latency_s"] for s in self.switches]
        return {"policy": self.policy, "switches": len(lat),
                "switch_latency_ms_mean": round(1000 * sum(lat) / len(lat), 3) if lat else None,
                "switch_latency_ms_max": round(1000 * max(lat), 3) if lat else None}


class InProcess:
    """Runs of a workload loaded once, in this process. The workload is built and loaded by
    ``prepare()``, which the driver calls before the first run (after measuring idle power), so a
    dry run or an already finished sweep never loads a model."""

    mode = "in-process"
    measured = True

    def __init__(self, make: Callable[[], Workload], phase_clocks: PhaseClocks | None = None):
        self._make = make
        self.phase_clocks = phase_clocks
        self.workload: Workload | None = None
        self.config: dict | None = None

    def prepare(self) -> None:
        if self.workload is None:
            self.workload = self._make()
            self.config = self.workload.load()

    def run(self, spec: RunSpec, files: RunFiles) -> RunOutcome:
        self.prepare()
        pc = self.phase_clocks
        if pc is not None:
            pc.begin(spec.clock, files.events)
        ctx = RunContext(spec.run_id, spec.clock, files.events, files.metrics,
                         on_phase=pc.on_phase if pc else None, warmup=spec.warmup)
        status, stopped_by = "ok", None
        t_start = time.monotonic()
        try:
            self.workload.run(ctx)
        except Interrupted as exc:
            status, stopped_by = "interrupted", exc
        except Exception as exc:  # noqa: BLE001 - a failed run is recorded, the sweep goes on (as with a process)
            status = "oom" if "out of memory" in str(exc).lower() or "OutOfMemory" in type(exc).__name__ else "failed"
            with open(files.err, "a") as err:
                err.write(f"{type(exc).__name__}: {exc}\n")
        finally:
            t_end = time.monotonic()
            if pc is not None:
                pc.end()
        return RunOutcome(status, 0 if status == "ok" else None, t_start, t_end, stopped_by=stopped_by,
                          phase_clocks=pc.summary() if pc else None)

    def close(self) -> None:
        if self.workload is not None:
            self.workload.close()


class CallableWorkload:
    """A plain function as a workload, for ``profiling.sweep(fn, ...)``: each call is one run.

    The call is one ``batch`` span (the work window); ``fn`` may return a dict of metrics (e.g.
    ``{"images": 4}``), which is written as the run's metrics JSON.
    """

    def __init__(self, fn: Callable[[], object], name: str):
        self.fn, self.name = fn, name

    def load(self) -> dict:
        return {}

    def run(self, ctx: RunContext) -> dict:
        def mark(event: str) -> None:
            if event == "start" and ctx.on_phase:
                ctx.on_phase(event, BATCH)
            if ctx.events_path is not None:
                append_line(ctx.events_path, json.dumps({"event": event, "phase": BATCH, "mono_s": time.monotonic(),
                                                         "batch": 0}), fsync=False)
            if event == "end" and ctx.on_phase:
                ctx.on_phase(event, BATCH)

        mark("start")
        out = self.fn()
        mark("end")
        metrics = dict(out) if isinstance(out, dict) else {}
        if ctx.metrics_path is not None:
            write_atomic(ctx.metrics_path, json.dumps(metrics, default=str))
        return metrics

    def close(self) -> None:
        """A plain function holds nothing to release."""


# --------------------------------------------------------------------------- recordings

class Replay:
    mode = "replay"
    measured = False

    def __init__(self, backend: GpuBackend):
        self.backend = backend

    def run(self, spec: RunSpec, files: RunFiles) -> RunOutcome:
        rec = self.backend.replay_run(spec.index)
        t0 = time.monotonic()
        samples = [type(s)(**{**s.__dict__, "mono_s": t0 + s.mono_s}) for s in rec.samples]
        metrics = {"config": rec.app_config, "images": rec.images, "activity": rec.activity, "replayed": True}
        write_atomic(files.metrics, json.dumps(metrics))
        return RunOutcome("ok", 0, t0, t0 + rec.duration_s, samples=samples)
