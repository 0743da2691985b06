"""Read what the launcher wrote (and the reference V100 format) into one tidy per-run table.

The per-run table has one row per measured run with these columns, whatever the source:
``source, workload, gpu, backend, synthetic, sm_clock_mhz, is_default_clock, run_index,
time_s, power_w, energy_j, images, energy_per_image_j`` plus the app's config (``app_*``) and
activity features (``sm_active, dram_active, fp_active, ...``) where the source has them.
``time_s``/``energy_j`` are the steady-state work window (model load and warm-up excluded).

Damaged input is either one ``DataError`` naming the file (a ``runs.csv`` or ``manifest.json`` that
is empty, binary or not what it should be), or, where only some rows are damaged (a torn or
repeated line, a non-numeric value, an unreadable samples file), those rows are skipped and one
note per kind of damage says how many: appended to the caller's ``notes`` list (the CLI prints
them), or issued as a ``DataWarning`` when none is given. Data is never silently dropped.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from profiling.backends.replay import (
    RUNS_NUMERIC,
    RecordError,
    is_reference_csv,
    read_reference,
    read_table,
    read_text,
)
from sd_energy_contract.gpus import load_gpu_specs
from sd_energy_contract.layout import DONE_STATUSES, RUNS_COLUMNS
from sd_energy_contract.phases import WORK_PHASES
from sd_energy_contract.reference import ACTIVITY_COLUMNS

REQUIRED = ["run_id", "sm_clock_target_mhz", "status", "warmup", "work_s", "work_energy_j"]
ACTIVITY = sorted(set(ACTIVITY_COLUMNS.values()))
WORKLOAD_KEYS = ["app_model_variant", "app_weights", "app_steps", "app_height", "app_width", "app_batch_size",
                 "app_scheduler", "app_dtype", "app_attention"]


class DataError(ValueError):
    """Input data that cannot be modelled; the message names the file and what is wrong."""


class DataWarning(UserWarning):
    """Damaged rows were skipped (issued where the caller collects no notes)."""


def _note(notes: list[str] | None, text: str) -> None:
    if notes is None:
        warnings.warn(text, DataWarning, stacklevel=3)
    else:
        notes.append(text)


def read_manifest(path: Path) -> dict:
    """``manifest.json`` of a results directory ({} when there is none); ``DataError`` when it is damaged.

    It says which GPU and backend the rows came from, so a damaged one is an error rather than
    a guess: analysing runs under the wrong GPU type gives wrong TDP ratios without a word.
    """
    if not path.exists():
        return {}
    try:
        data = json.loads(read_text(path, "a JSON manifest"))
    except RecordError as exc:
        raise DataError(str(exc)) from None
    except ValueError as exc:  # json.JSONDecodeError
        raise DataError(f"{path}: not valid JSON (line {getattr(exc, 'lineno', '?')}: "
                        f"{getattr(exc, 'msg', exc)})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: a JSON {type(data).__name__}, not the object of settings the launcher writes")
    return data


def find_result_dirs(paths: list[str | Path]) -> list[Path]:
    """Results directories under each path (a SLURM array writes one per task under a sweep dir)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise DataError(f"{p}: no such file or directory")
        if p.is_file():
            out.append(p)
        elif (p / "runs.csv").exists():
            out.append(p)
        else:
            found = sorted(q.parent for q in p.rglob("runs.csv"))
            if not found:
                raise DataError(f"{p}: no runs.csv in it or below it (is this a results directory?)")
            out.extend(found)
    return out


def _dedupe(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run_id: a finished row beats an interrupted one; the last finished row wins."""
    df = df.assign(_done=df["status"].isin(DONE_STATUSES), _order=np.arange(len(df)))
    df = df.sort_values(["run_id", "_done", "_order"]).groupby("run_id", as_index=False).tail(1)
    return df.sort_values("_order").drop(columns=["_done", "_order"])


def _activity_from_samples(result_dir: Path, run_ids: pd.Series, notes: list[str] | None = None) -> pd.DataFrame:
    """Mean activity counters over each run's work phases, from its samples file where it has one.

    A samples file that is empty, binary or not a samples table leaves only its run's counters out
    (the run's time and energy are in ``runs.csv``); how many were skipped is one note.
    """
    samples = result_dir / "samples"
    present = {e.name for e in os.scandir(samples)} if samples.is_dir() else set()
    rows, unreadable, damaged = [], [], 0
    for rid in run_ids[(run_ids.astype(str) + ".csv").isin(present)] if present else []:
        feats = {"run_id": rid}
        try:
            s, skipped = read_table(samples / f"{rid}.csv", "a samples file", ("mono_s", "power_w"),
                                    ["mono_s", "power_w", *ACTIVITY])
        except RecordError:
            unreadable.append(f"{rid}.csv")
            continue
        damaged += bool(skipped)
        work = s[s["phase"].isin(WORK_PHASES)] if "phase" in s else s
        work = work if len(work) else s
        for col in ACTIVITY:
            if col in work and work[col].notna().any():
                feats[col] = float(work[col].mean())
        rows.append(feats)
    if unreadable:
        shown = ", ".join(unreadable[:3]) + (", ..." if len(unreadable) > 3 else "")
        _note(notes, f"{samples}: skipped {len(unreadable)} unreadable samples file(s) ({shown}): "
                     "their runs are kept, without activity counters")
    if damaged:
        _note(notes, f"{samples}: {damaged} samples file(s) had damaged rows, skipped")
    return pd.DataFrame(rows, columns=["run_id"]) if not rows else pd.DataFrame(rows)


def _phase_energies(df: pd.DataFrame, runs_path: Path, notes: list[str] | None) -> pd.Series:
    """``phase_energy_json`` where it is a JSON object (the report parses it), None where it is damaged."""
    raw = df["phase_energy_json"] if "phase_energy_json" in df else pd.Series([None] * len(df), index=df.index)

    def valid(text):
        if not isinstance(text, str) or not text.strip():
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return False
        return text if isinstance(value, dict) else False

    checked = raw.map(valid)
    bad = checked.map(lambda v: v is False)
    if bad.any():
        _note(notes, f"{runs_path}: {int(bad.sum())} row(s) with unreadable phase_energy_json: "
                     "their phase energies are left out")
    return checked.where(~bad, None)


def read_runs_csv(runs_path: Path, notes: list[str] | None = None) -> pd.DataFrame:
    """``runs.csv`` with its damaged rows skipped and noted; ``DataError`` when the file itself is damaged."""
    try:
        df, skipped = read_table(runs_path, "a runs.csv", (), RUNS_NUMERIC)
    except RecordError as exc:
        raise DataError(str(exc)) from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"{runs_path}: missing column(s) {', '.join(missing)}")
    for text in skipped:
        _note(notes, text)
    df["run_id"] = df["run_id"].astype(str)
    df["status"] = df["status"].astype(str)
    return df


def load_results_dir(path: Path, notes: list[str] | None = None) -> pd.DataFrame:
    runs_path = path / "runs.csv"
    df = read_runs_csv(runs_path, notes)
    manifest = read_manifest(path / "manifest.json")
    slurm = manifest.get("slurm") if isinstance(manifest.get("slurm"), dict) else {}
    df = _dedupe(df)
    df = df.assign(sequence=np.arange(len(df)))
    df = df[df["status"] == "ok"].copy()
    if df.empty:
        return df
    act = _activity_from_samples(path, df["run_id"], notes)
    if len(act.columns) > 1:
        df = df.merge(act, on="run_id", how="left")
    default = df["sm_clock_target_mhz"].isna()
    out = pd.DataFrame({
        "source": str(path),
        "run_id": df["run_id"].values,
        "workload": _workload_names(df).values,
        "gpu": df.get("gpu_type", pd.Series([manifest.get("gpu_type")] * len(df))).fillna("unknown").astype(str).values,
        "gpu_name": df.get("gpu_name", "").values,
        "backend": df.get("backend", manifest.get("backend", "unknown")).values,
        "synthetic": bool(manifest.get("synthetic", (df.get("backend") == "simulated").any())),
        "sm_clock_mhz": df["sm_clock_target_mhz"].fillna(df.get("sm_clock_mean_mhz")).values,
        "is_default_clock": default.values,
        "run_index": df["run_index"].values,
        "sequence": df["sequence"].values,
        "warmup": df["warmup"].fillna(0).astype(int).astype(bool).values,
        "clock_mismatch": df.get("clock_mismatch", pd.Series([0] * len(df), index=df.index)).fillna(0).astype(bool).values,
        "sm_clock_measured_mhz": df.get("sm_clock_mean_mhz", pd.Series([np.nan] * len(df), index=df.index)).values,
        "time_s": df["work_s"].values,
        "energy_j": df["work_energy_j"].values,
        "images": df.get("images", pd.Series([np.nan] * len(df))).values,
        "idle_power_w": df.get("idle_power_w", pd.Series([np.nan] * len(df))).values,
        "flops_per_image": df.get("flops_per_image", pd.Series([np.nan] * len(df))).values,
        "phase_energy_json": _phase_energies(df, runs_path, notes).values,
        "phase_policy": _phase_policies(df).values,
        "slurm_job": slurm.get("SLURM_JOB_ID"),
        "slurm_array_task": slurm.get("SLURM_ARRAY_TASK_ID"),
    })
    out["power_w"] = out["energy_j"] / out["time_s"]
    out["energy_per_image_j"] = out["energy_j"] / out["images"].where(out["images"] > 0)
    for col in [c for c in RUNS_COLUMNS if c.startswith("app_")] + [c for c in ACTIVITY if c in df]:
        out[col] = df[col].values if col in df else np.nan
    add_utilisation(out)
    return out


def add_utilisation(runs: pd.DataFrame) -> None:
    """Achieved TFLOP/s and model FLOP utilisation against the GPU type's dense peak (configs/gpus.yaml)."""
    specs = load_gpu_specs()
    runs["achieved_tflops"] = runs["flops_per_image"] * runs["images"] / runs["time_s"] / 1e12
    dtype = runs["app_dtype"].astype(str) if "app_dtype" in runs else pd.Series("bf16", index=runs.index)
    dtype = dtype.where(dtype.isin(["fp16", "bf16", "fp32"]), "bf16")
    pairs = pd.MultiIndex.from_arrays([runs["gpu"].astype(str), dtype])
    peak = {(g, d): (specs.get(g, {}).get("peak_tflops") or {}).get(d) for g, d in pairs.unique()}
    runs["mfu"] = runs["achieved_tflops"] / pd.Series(pairs.map(peak), index=runs.index, dtype=float)


def _phase_policies(df: pd.DataFrame) -> pd.Series:
    """``denoise_step=1395,vae_decode=990`` for runs measured under a per-phase clock policy, "" otherwise.

    Such a run is not a measurement of its clock (the clock moved with the phases): it is kept
    apart from the per-clock statistics and compared with the best single clock instead.
    """
    raw = df["phase_clocks"] if "phase_clocks" in df else pd.Series([None] * len(df), index=df.index)

    def canonical(text) -> str:
        if not isinstance(text, str) or not text.strip():
            return ""
        try:
            policy = json.loads(text).get("policy") or {}
        except (ValueError, AttributeError):
            return "unreadable"
        return ",".join(f"{k}={int(v)}" for k, v in sorted(policy.items()))

    return raw.map(canonical)


def _workload_names(df: pd.DataFrame) -> pd.Series:
    keys = [k for k in WORKLOAD_KEYS if k in df.columns and df[k].notna().any()]
    if not keys:
        return df.get("workload", pd.Series(["app"] * len(df), index=df.index)).astype(str)
    base = df.get("workload", pd.Series(["app"] * len(df), index=df.index)).astype(str)
    parts = df[keys].astype(str).apply(lambda r: "/".join(r.values), axis=1)
    return base + ":" + parts


def load_reference_csv(path: Path, notes: list[str] | None = None) -> pd.DataFrame:
    """A reference-format CSV (one row per application, clock and run) as tidy runs.

    Optional columns beyond the reference V100 tables, so measured data with its artefacts can be
    expressed in the same format: ``gpu`` (GPU type; default V100, the reference data's),
    ``run_index`` (repeat number), ``warmup`` (1 = unmeasured warm-up run), ``clock_mismatch``
    (1 = the lock did not take effect) or ``sm_clock_mean_mhz`` (the clock measured during the run,
    from which a mismatch is judged as by the launcher), ``is_default_clock`` (1 = unlocked clock).
    """
    try:
        ref, skipped = read_reference(path)
    except RecordError as exc:
        raise DataError(str(exc)) from None
    for text in skipped:
        _note(notes, text)
    n = len(ref)

    def col(name, default):
        return ref[name].values if name in ref else np.full(n, default)

    def number(name, default):
        """An optional numeric column; a damaged value counts as absent (the default)."""
        return pd.to_numeric(pd.Series(col(name, default)), errors="coerce").fillna(default).values

    measured = pd.to_numeric(pd.Series(col("sm_clock_mean_mhz", np.nan)), errors="coerce").values
    target = ref["sm_clock_mhz"].astype(float).values
    mismatch = number("clock_mismatch", 0) > 0
    mismatch |= np.nan_to_num(np.abs(measured - target)) > np.maximum(15, 0.01 * target)
    run_index = number("run_index", 0).astype(int)
    out = pd.DataFrame({
        "source": str(path),
        "run_id": [f"{w}_{int(c)}_{int(i)}" for w, c, i in zip(ref["workload"], ref["sm_clock_mhz"], run_index,
                                                              strict=True)],
        "workload": ref["workload"], "gpu": pd.Series(col("gpu", "V100")).astype(str).values,
        "gpu_name": col("gpu", "Tesla V100 (reference)"), "backend": "reference",
        "synthetic": col("synthetic", False).astype(bool), "sm_clock_mhz": target,
        "is_default_clock": col("is_default_clock", False).astype(bool), "run_index": run_index,
        "sequence": np.arange(n), "warmup": number("warmup", 0) > 0, "clock_mismatch": mismatch,
        "sm_clock_measured_mhz": measured,
        "time_s": ref["work_s"], "energy_j": ref["energy_j"], "images": np.nan, "idle_power_w": np.nan,
        "flops_per_image": np.nan,
    })
    out["power_w"] = ref["avg_power_w"].values
    out["energy_per_image_j"] = np.nan
    out["phase_policy"] = ""
    for c in ACTIVITY:
        if c in ref:
            out[c] = ref[c].values
    return out


def load_runs(paths: list[str | Path], notes: list[str] | None = None) -> pd.DataFrame:
    """All measured runs under ``paths`` (results dirs, sweep dirs, reference CSVs) in one table.

    ``notes`` collects one line per kind of damaged data skipped (see the module's docstring).
    """
    frames = []
    for p in find_result_dirs(paths):
        if p.is_file():
            if p.suffix == ".csv":
                try:  # an empty or binary file: said as such, not as a CSV of another layout
                    read_text(p, "a reference CSV")
                except RecordError as exc:
                    raise DataError(str(exc)) from None
            if p.suffix != ".csv" or not is_reference_csv(p):
                raise DataError(f"{p}: not a results directory nor a reference CSV "
                                "(needs sm_app_clock, application, power_usage, run_time)")
            frames.append(load_reference_csv(p, notes))
        else:
            frames.append(load_results_dir(p, notes))
    frames = [f for f in frames if not f.empty]
    if not frames:
        raise DataError(f"{', '.join(map(str, paths))}: no successful measured run (all failed, or only warm-up)")
    df = pd.concat(frames, ignore_index=True)
    values = df[["time_s", "energy_j", "power_w", "sm_clock_mhz"]].apply(pd.to_numeric, errors="coerce")
    # NaN, inf, zero or negative: no measurement of a run has them, so the row is damaged or the run broken.
    bad = ~(np.isfinite(values) & (values > 0)).all(axis=1)
    if bad.all():
        raise DataError(f"{', '.join(map(str, paths))}: every run has missing (NaN), infinite, zero or negative "
                        "time/energy/clock values")
    if df.loc[~bad, "warmup"].all():
        raise DataError(f"{', '.join(map(str, paths))}: no successful measured run (all failed, or only warm-up)")
    if bad.any():
        _note(notes, f"skipped {int(bad.sum())} run(s) with missing, infinite, zero or negative time, energy or "
                     "clock")
    df[["time_s", "energy_j", "power_w", "sm_clock_mhz"]] = values
    return df[~bad].reset_index(drop=True)
