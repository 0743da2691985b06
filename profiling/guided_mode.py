"""Guided mode (``--profiling-mode guided``): measure only the clocks a planner asks for.

The max clock first, then wherever the cross-workload model (corrected by the probes so far)
predicts the best objective, until the planner stops. The planner lives in ``power_modeling`` and
is found through the ``sd_energy.clock_planners`` entry point (``profiling.planning``): this layer
never imports the layers above it. Each probe is an ordinary one-clock sweep, so rows, per-run
files, clock restoring and resume work as in any other mode.
"""

from __future__ import annotations

import csv
import json
import math
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from sd_energy_contract.errors import InputError
from sd_energy_contract.files import write_atomic
from sd_energy_contract.layout import GUIDED_JSON, run_id
from sd_energy_contract.phases import WORK_PHASES
from sd_energy_contract.reference import ACTIVITY_COLUMNS

from .config import SweepConfig
from .planning import ClockPlanner, PlannerError, SweepPlan, load_planner
from .results import ResultsDir

if TYPE_CHECKING:
    from .driver import Sweep

# The planner's keyword arguments and the options they come from, for one-line errors.
PLANNER_OPTIONS = {"model_path": "--guided-model", "max_probes": "--guided-probes", "objective": "--objective",
                   "min_probes": "--guided-min-probes",
                   "max_slowdown": "--max-slowdown", "gpu_type": "--gpu-type", "clocks": "--min-frequency"}


def _planner_error(exc: PlannerError) -> InputError:
    """A planner's complaint as the launcher's one-line error, naming the option the value came from."""
    option = PLANNER_OPTIONS.get(exc.param or "", "--profiling-mode")
    text = str(exc)
    if exc.param == "model_path" and exc.value is None:
        return InputError(option, "(default: the shipped model)", text)
    if exc.param is None:
        return InputError(option, "guided", text)
    value = exc.value
    if value is not None and text.startswith(f"{value}: "):  # load_model's messages start with the path
        text = text[len(f"{value}: "):]
    return InputError(option, value, text)


def make_planner(cfg: SweepConfig, clocks: list, gpu_type: str | None) -> ClockPlanner:
    """The guided planner over the candidate clocks; every problem with its settings is a one-line error."""
    try:
        return load_planner("guided", clocks=[c for c in clocks if c is not None], model_path=cfg.guided_model,
                            objective=cfg.objective, max_probes=cfg.guided_probes, max_slowdown=cfg.slowdown_cap,
                            stop_gain=0.0, gpu_type=gpu_type, min_probes=cfg.min_probes)
    except PlannerError as exc:
        raise _planner_error(exc) from None


def _probe_runs(results: ResultsDir, clock: int, num_runs: int) -> list[dict]:
    """The rows of ``clock``'s measured runs that count: ok, not warm-up, the lock applied.

    The last row of a run id wins (a run interrupted and redone on resume has two).
    """
    latest = {r["run_id"]: r for r in results.read_rows()}
    rows = [latest.get(run_id(clock, i, False)) for i in range(num_runs)]
    return [r for r in rows if r and r["status"] == "ok" and r["clock_mismatch"] == "0"
            and _finite(r["work_s"]) and _finite(r["work_energy_j"])]


def _finite(text: str | None) -> bool:
    try:
        return math.isfinite(float(text))
    except (TypeError, ValueError):
        return False


def _run_activity(results: ResultsDir, rid: str, names: set[str]) -> dict[str, float]:
    """A run's activity counters: what the replayed run recorded (apps JSON ``activity``), else the
    mean over the run's work-phase samples of each counter column that has values (DCGM)."""
    act = _read_json(results.file("apps", rid)).get("activity")
    if isinstance(act, dict) and act:
        return {k: float(v) for k, v in act.items() if k in names and _finite(v)}
    path = results.file("samples", rid)
    try:
        with open(path, newline="") as fh:
            samples = list(csv.DictReader(fh))
    except OSError:
        return {}
    work = [s for s in samples if s.get("phase") in WORK_PHASES] or samples
    out = {}
    for name in names & set(samples[0] if samples else {}):
        vals = [float(s[name]) for s in work if _finite(s.get(name))]
        if vals:
            out[name] = sum(vals) / len(vals)
    return out


def _probe_features(results: ResultsDir, rows: list[dict]) -> dict[str, float]:
    """Each activity counter averaged over the probe's usable runs (those that have it)."""
    names = set(ACTIVITY_COLUMNS.values())
    per_run = [_run_activity(results, r["run_id"], names) for r in rows]
    keys = sorted({k for a in per_run for k in a})
    return {k: sum(a[k] for a in per_run if k in a) / sum(k in a for a in per_run) for k in keys}


def run_guided(cfg: SweepConfig, planner: ClockPlanner, sweep: Sweep, manifest: dict, log=print) -> int:  # log: see profiling.driver.Log
    """Measure the clocks the planner asks for, one probe (a one-clock sweep) at a time, until it stops.

    Each probe is read back from runs.csv, not from memory, so a resumed launch feeds the planner
    exactly what the first one measured and takes the same path up to where it was stopped.
    """
    results = sweep.results
    failures, runs, n = 0, 0, 0
    try:
        while (f := planner.next_clock()) is not None:
            clock = int(round(f))
            n += 1
            log(f"guided: probe {n}: {clock} MHz")
            plan = SweepPlan([clock], cfg.num_runs, cfg.warmup_runs)
            before = len(results.done_run_ids())
            failures += sweep.run(plan)
            runs += len(plan.runs)
            rows = _probe_runs(results, clock, cfg.num_runs)
            if not rows:
                log(f"guided: no usable run at {clock} MHz (failed, or the clock did not lock)", err=True)
            planner.observe(float(clock), [float(r["work_s"]) for r in rows],
                            [float(r["work_energy_j"]) for r in rows], _probe_features(results, rows))
            if len(results.done_run_ids()) > before and cfg.sleep_interval > 0 and sweep.source.measured:
                time.sleep(cfg.sleep_interval)  # the cool-down between runs, also between probes
    except PlannerError as exc:
        raise _planner_error(exc) from None
    result = planner.result()
    write_atomic(results.path / GUIDED_JSON, json.dumps(result, indent=2))
    manifest["end_utc"] = datetime.now(timezone.utc).isoformat()
    manifest["guided"] = {**manifest.get("guided", {}), "clock_mhz": result.get("clock_mhz"),
                          "probes_mhz": result.get("probes_mhz"), "stop_reason": result.get("stop_reason")}
    results.write_manifest(manifest)
    for line in guided_summary(result):
        log(line)
    log(f"done: {runs} runs, {failures} not ok; results in {results.path}")
    return 0 if result.get("clock_mhz") is not None else 1


def _pct(value, lo, hi) -> str:
    if value is None:
        return "unknown"
    if lo is None or hi is None:
        return f"{value:.1f} % (interval unknown)"
    return f"{value:.1f} % [{lo:.1f}, {hi:.1f}]"


def guided_summary(r: dict) -> list[str]:
    """A few lines a reader can act on: the clock, what it saves (with its interval), how it was found."""
    probes = r.get("probes_mhz") or []
    model = (r.get("model") or {}).get("source") or "?"
    if (r.get("model") or {}).get("path"):
        model = f"{model} {r['model']['path']}"
    if r.get("clock_mhz") is None:
        return [f"guided: no clock chosen: {r.get('stop_reason') or 'no probe measured'}"]
    name = {"energy": "energy", "edp": "EDP", "ed2p": "ED2P"}.get(r.get("objective"), r.get("objective"))
    cap = "" if r.get("max_slowdown") is None else f" at <= {100 * r['max_slowdown']:.0f} % slowdown"
    if r.get("verdict") == "no significant saving":
        first = (f"guided: keep {r['clock_mhz']:.0f} MHz (the max clock): no significant {name} saving{cap} (the "
                 f"best probe, {r.get('best_probe_mhz', float('nan')):.0f} MHz, is within the run-to-run noise)")
    elif r["clock_mhz"] == r.get("reference_clock_mhz"):
        first = f"guided: keep {r['clock_mhz']:.0f} MHz (the max clock): no measured clock had a lower {name}{cap}"
    else:
        first = (f"guided: use {r['clock_mhz']:.0f} MHz for minimum {name}{cap} (vs {r['reference_clock_mhz']:.0f} "
                 f"MHz): energy saved "
                 f"{_pct(r.get('energy_saved_pct'), r.get('energy_saved_lo_pct'), r.get('energy_saved_hi_pct'))}, "
                 f"slowdown {_pct(r.get('slowdown_pct'), r.get('slowdown_lo_pct'), r.get('slowdown_hi_pct'))}")
    lines = [first, f"guided: {len(probes)} clocks measured ({', '.join(f'{p:.0f}' for p in probes)} MHz); "
                    f"stopped: {r.get('stop_reason') or '-'}; model: {model}"]
    if r.get("verdict") == "uncertainty unknown":
        lines.append("guided: one run per clock: the uncertainty is unknown (--num-runs 3 gives intervals)")
    for problem in r.get("data_problems") or []:
        lines.append(f"guided: data problem: {problem}")
    for clock, reasons in (r.get("screened_runs") or {}).items():
        lines.append(f"guided: left out at {clock} MHz: {', '.join(reasons)}")
    if r.get("extrapolation"):
        lines.append(f"guided: the model extrapolates here: {'; '.join(r['extrapolation'])}")
    return lines



def describe_guided_plan(cfg: SweepConfig, clocks: list) -> list[str]:
    k = cfg.guided_probes
    per_clock = cfg.num_runs + cfg.warmup_runs
    return [f"mode: guided; candidate clocks ({len(clocks)}): {clocks[0]}-{clocks[-1]} MHz; probes are chosen "
            f"adaptively, one at a time: first the max clock ({clocks[0]} MHz), then where the model predicts "
            f"the best {cfg.objective}; at most {k} clocks, fewer when no further gain is predicted",
            f"model: {cfg.guided_model or 'shipped (with activity counters when the first probe has them)'}",
            f"runs: at most {k * per_clock} ({cfg.num_runs} per clock + {cfg.warmup_runs} warm-up)"]




def _read_json(path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
