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

import csv
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

from . import bulkcsv
from .errors import DataError

REQUIRED = ["run_id", "sm_clock_target_mhz", "status", "warmup", "work_s", "work_energy_j"]
ACTIVITY = sorted(set(ACTIVITY_COLUMNS.values()))
WORKLOAD_KEYS = ["app_model_variant", "app_weights", "app_steps", "app_height", "app_width", "app_batch_size",
                 "app_scheduler", "app_dtype", "app_attention"]


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


# Columns of runs.csv the per-run table is built from; the rest (start time, raw energy figures, the
# sensors' settings) stays in the file. Number columns are all read anyway, to be checked.
USED_COLUMNS = frozenset({"run_id", "status", "sm_clock_target_mhz", "sm_clock_mean_mhz", "gpu_type", "gpu_name",
                          "backend", "run_index", "warmup", "clock_mismatch", "work_s", "twin_host_bound_s",
                          "work_energy_j", "images", "idle_power_w", "flops_per_image", "phase_energy_json",
                          "phase_clocks", "workload", *[c for c in RUNS_COLUMNS if c.startswith("app_")], *ACTIVITY})
# Text columns with few distinct values, read as categories: a million rows then hold a few dozen strings.
CATEGORY_COLUMNS = frozenset({"run_id", "status", "gpu_type", "gpu_name", "backend", "workload", "app_model_variant",
                              "app_weights", "app_scheduler", "app_dtype", "app_attention", "app_device"})
SAMPLES_REQUIRED = ("mono_s", "power_w")
HEAD_BYTES = 1 << 16  # a samples file's header is read from its first 64 KiB


def _activity_from_samples(result_dir: Path, run_ids: np.ndarray,
                           notes: list[str] | None = None) -> pd.DataFrame | None:
    """Mean activity counters over each run's work phases, from its samples file where it has them.

    Only a file whose header names an activity counter (DCGM, replayed reference data) is read
    whole: NVML and nvidia-smi traces have none, and reading 10 000 of them to learn that took
    seconds. Every file's header is still checked, so a file that is empty, binary or not a samples
    table is said (its run is kept, without counters), as when each was read. None when no run
    has counters.
    """
    samples = result_dir / "samples"
    present = {e.name for e in os.scandir(samples)} if samples.is_dir() else set()
    if not present:
        return None
    rows, unreadable, damaged = [], [], 0
    for rid in [r for r in run_ids if f"{r}.csv" in present]:
        path = samples / f"{rid}.csv"
        header = _samples_header(path)
        if header is None:
            unreadable.append(f"{rid}.csv")
            continue
        if not any(c in ACTIVITY for c in header):
            continue  # nothing in it this analysis uses
        feats = {"run_id": rid}
        try:
            s, skipped = read_table(path, "a samples file", SAMPLES_REQUIRED, ["mono_s", "power_w", *ACTIVITY])
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
    return pd.DataFrame(rows) if rows else None


def _samples_header(path: Path) -> list[str] | None:
    """The column names of a samples file, or None where ``read_table`` would refuse the file whole
    (unreadable, empty, binary, not UTF-8, no complete header line, no ``mono_s``/``power_w``)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError:
        return None
    line, newline, _ = head.partition(b"\n")
    if not newline or b"\0" in head or not line.strip():
        return None
    try:
        names = next(csv.reader([line.decode("utf-8-sig")]), [])
    except (UnicodeDecodeError, csv.Error):
        return None
    return names if all(c in names for c in SAMPLES_REQUIRED) else None


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


def _read_runs(dirs: list[Path], notes: list[str] | None) -> tuple[pd.DataFrame, list[set[str]], list[dict]]:
    """Every directory's ``runs.csv`` as one frame (``_dir``: its index in ``dirs``, ``_order``: its line),
    the column names each file has, and each directory's manifest.

    Files shown clean are parsed together (``bulkcsv``); the others, and any a number check
    rejects, are read one by one with ``read_runs_csv``, which raises for a damaged file and notes
    damaged rows: the same outcome as reading every file that way, at a fraction of the cost.
    """
    reader = bulkcsv.BulkReader(RUNS_NUMERIC, USED_COLUMNS, CATEGORY_COLUMNS)
    slow, columns, manifests = {}, [], []
    for k, d in enumerate(dirs):
        path = d / "runs.csv"
        try:
            c = bulkcsv.check(k, path.read_bytes())
        except OSError:
            c = None
        names = next(csv.reader([c.header.decode()])) if c is not None else []
        if c is None or any(r not in names for r in REQUIRED):
            slow[k] = read_runs_csv(path, notes)
            names = list(slow[k].columns)
        else:
            reader.add(c)
        columns.append(set(names))
        manifests.append(read_manifest(d / "manifest.json"))
    fast, owner, rejected = reader.result()
    for k in sorted(rejected):
        slow[k] = read_runs_csv(dirs[k] / "runs.csv", notes)
    frames = []
    if len(fast):
        start = np.r_[True, owner[1:] != owner[:-1]]
        first = np.maximum.accumulate(np.where(start, np.arange(len(owner)), 0))
        frames.append(fast.assign(_dir=owner, _order=np.arange(len(owner)) - first))
    frames += [f.assign(_dir=k, _order=np.arange(len(f))) for k, f in slow.items()]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=[*REQUIRED, "_dir", "_order"]), columns, manifests
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    order = np.lexsort((df["_order"].to_numpy(), df["_dir"].to_numpy()))
    if (np.diff(order) != 1).any():  # files of several headers, or read row by row: restore the file order
        df = df.take(order).reset_index(drop=True)
    df["run_id"] = df["run_id"].astype(str)
    df["status"] = df["status"].astype(str)
    return df, columns, manifests


def _dedupe(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run_id of a directory: a finished row beats an interrupted one; the last finished row wins.

    ``df`` is in (directory, line) order; so is the result.
    """
    if df.empty:
        return df
    rid = pd.factorize(df["run_id"])[0]
    done = df["status"].isin(DONE_STATUSES).to_numpy()
    d = df["_dir"].to_numpy()
    order = np.lexsort((df["_order"].to_numpy(), done, rid, d))
    last = np.r_[(d[order][1:] != d[order][:-1]) | (rid[order][1:] != rid[order][:-1]), True]
    if last.all():  # no run_id written twice (no resumed or redone run): nothing to drop
        return df
    return df.take(np.sort(order[last])).reset_index(drop=True)


def _per_dir(values: list, index: np.ndarray) -> np.ndarray:
    """A per-directory value on each row (``index``: the rows' ``_dir``)."""
    return np.asarray(values, dtype=object)[index] if len(values) else np.zeros(0, object)


def _column(df: pd.DataFrame, name: str, columns: list[set[str]], absent) -> pd.Series:
    """Column ``name`` where a row's file has it; ``absent`` (one value, or one per directory) where it has not."""
    value = df[name] if name in df else pd.Series(np.nan, index=df.index, dtype=object)
    lacks = np.array([name not in c for c in columns], bool)[df["_dir"].to_numpy()]
    if not lacks.any():
        return value
    fill = _per_dir(absent, df["_dir"].to_numpy()) if isinstance(absent, list) else np.full(len(df), absent, object)
    return pd.Series(np.where(lacks, fill, value.to_numpy(object)), index=df.index)


def load_results_dirs(dirs: list[Path], notes: list[str] | None = None) -> pd.DataFrame:
    """The tidy runs of many results directories at once: one parse, one table, no pass per row or per directory
    beyond reading its files."""
    df, columns, manifests = _read_runs(dirs, notes)
    df = _dedupe(df)
    d = df["_dir"].to_numpy()
    first = np.r_[0, np.flatnonzero(d[1:] != d[:-1]) + 1] if len(d) else np.zeros(0, int)
    df["sequence"] = np.arange(len(d)) - np.repeat(first, np.diff(np.r_[first, len(d)]))
    ok = (df["status"] == "ok").to_numpy()
    if not ok.all():
        df = df[ok].reset_index(drop=True)
    if df.empty:
        return pd.DataFrame()
    d = df["_dir"].to_numpy()
    run_ids = df["run_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
    acts = []
    for a, b in zip(starts, np.r_[starts[1:], len(d)], strict=True):  # rows are in directory order
        act = _activity_from_samples(dirs[d[a]], run_ids[a:b], notes)
        if act is not None and len(act.columns) > 1:
            acts.append(act.assign(_dir=d[a]))
    if acts:
        df = df.drop(columns=[c for c in ACTIVITY if c in df]).merge(
            pd.concat(acts, ignore_index=True), on=["_dir", "run_id"], how="left")
    slurm = [m.get("slurm") if isinstance(m.get("slurm"), dict) else {} for m in manifests]
    backend = _column(df, "backend", columns, [m.get("backend", "unknown") for m in manifests])
    simulated = (df["backend"] == "simulated") if "backend" in df else pd.Series(False, index=df.index)
    any_simulated = simulated.groupby(d).any()
    synthetic = [bool(m.get("synthetic", any_simulated.get(k, False))) for k, m in enumerate(manifests)]
    zeros = pd.Series(0, index=df.index)
    out = pd.DataFrame({
        "source": _per_dir([str(p) for p in dirs], d),
        "run_id": df["run_id"].to_numpy(),
        "workload": _workload_names(df).to_numpy(),
        "gpu": _column(df, "gpu_type", columns, [m.get("gpu_type") for m in manifests]).fillna("unknown")
        .astype(str).to_numpy(),
        "gpu_name": _column(df, "gpu_name", columns, "").to_numpy(),
        # The SKU the launcher resolved (H100-SXM5 vs H100-NVL differ in peak FLOP/s and TDP); "" before it.
        "gpu_sku": df["gpu_sku"].fillna("").astype(str).to_numpy() if "gpu_sku" in df else "",
        "backend": backend.to_numpy(),
        "synthetic": _per_dir(synthetic, d).astype(bool),
        "sm_clock_mhz": df["sm_clock_target_mhz"].fillna(df["sm_clock_mean_mhz"] if "sm_clock_mean_mhz" in df
                                                         else np.nan).to_numpy(),
        "is_default_clock": df["sm_clock_target_mhz"].isna().to_numpy(),
        "run_index": df["run_index"].to_numpy() if "run_index" in df else np.nan,
        "sequence": df["sequence"].to_numpy(),
        "warmup": df["warmup"].fillna(0).astype(int).astype(bool).to_numpy(),
        "clock_mismatch": df.get("clock_mismatch", zeros).fillna(0).astype(bool).to_numpy(),
        "sm_clock_measured_mhz": df["sm_clock_mean_mhz"].to_numpy() if "sm_clock_mean_mhz" in df else np.nan,
        "time_s": df["work_s"].to_numpy(),
        "host_bound_s": pd.to_numeric(df.get("twin_host_bound_s", zeros), errors="coerce").fillna(0.0).to_numpy(),
        "energy_j": df["work_energy_j"].to_numpy(),
        "images": df["images"].to_numpy() if "images" in df else np.nan,
        "idle_power_w": df["idle_power_w"].to_numpy() if "idle_power_w" in df else np.nan,
        "flops_per_image": df["flops_per_image"].to_numpy() if "flops_per_image" in df else np.nan,
        "phase_energy_json": _phase_energies(df, dirs, notes).to_numpy(),
        "phase_policy": _phase_policies(df).to_numpy(),
        "slurm_job": _per_dir([s.get("SLURM_JOB_ID") for s in slurm], d),
        "slurm_array_task": _per_dir([s.get("SLURM_ARRAY_TASK_ID") for s in slurm], d),
    })
    out["power_w"] = out["energy_j"] / out["time_s"]
    out["energy_per_image_j"] = out["energy_j"] / out["images"].where(out["images"] > 0)
    for col in [c for c in RUNS_COLUMNS if c.startswith("app_")] + [c for c in ACTIVITY if c in df]:
        out[col] = df[col].to_numpy() if col in df else np.nan
    add_utilisation(out)
    return out


def load_results_dir(path: Path, notes: list[str] | None = None) -> pd.DataFrame:
    """The tidy runs of one results directory (``load_results_dirs`` of one)."""
    return load_results_dirs([Path(path)], notes)


def _texts(col: pd.Series) -> pd.Series:
    """The column's text values, NaN for anything else (a number, a missing value)."""
    if col.dtype == object:
        return col.where(col.map(lambda v: isinstance(v, str)).astype(bool))
    if pd.api.types.is_string_dtype(col):
        return col
    return pd.Series(np.nan, index=col.index, dtype=object)


def _phase_energies(df: pd.DataFrame, dirs: list[Path], notes: list[str] | None) -> pd.Series:
    """``phase_energy_json`` where it has the shape of a JSON object, None where it is empty or damaged.

    A shape check (``{...}``), not a parse: parsing a million rows' phase energies took ~18 s and
    only the report reads them, for the workloads it draws (it leaves out, and counts, a text that
    still fails to parse). A torn or cut text, the damage a crash leaves, fails the shape.
    """
    if "phase_energy_json" not in df:
        return pd.Series(None, index=df.index, dtype=object)
    text = _texts(df["phase_energy_json"])
    is_text = text.notna()
    shaped = text.str.startswith("{", na=False) & text.str.endswith("}", na=False)
    other = is_text & ~shaped                            # blank, padded with spaces, or damaged
    stripped = text[other].astype(str).str.strip()
    shaped[other] = (stripped.str.startswith("{") & stripped.str.endswith("}")).to_numpy()
    bad = other & (stripped.reindex(df.index).fillna("") != "") & ~shaped
    if bad.any():
        counts = pd.Series(df["_dir"].to_numpy()[bad.to_numpy()]).value_counts().sort_index()
        for k, n in counts.items():
            _note(notes, f"{dirs[k] / 'runs.csv'}: {int(n)} row(s) with unreadable phase_energy_json: "
                         "their phase energies are left out")
    return pd.Series(np.where(shaped, text.to_numpy(object), None), index=df.index, dtype=object)


def _phase_policies(df: pd.DataFrame) -> pd.Series:
    """``denoise_step=1395,vae_decode=990`` for runs measured under a per-phase clock policy, "" otherwise.

    Such a run is not a measurement of its clock (the clock moved with the phases): it is kept
    apart from the per-clock statistics and compared with the best single clock instead. Each
    distinct text is read once (a sweep repeats one policy).
    """
    if "phase_clocks" not in df:
        return pd.Series("", index=df.index, dtype=object)
    texts = _texts(df["phase_clocks"])

    def canonical(text: str) -> str:
        if not text.strip():
            return ""
        try:
            policy = json.loads(text).get("policy") or {}
        except (ValueError, AttributeError):
            return "unreadable"
        return ",".join(f"{k}={int(v)}" for k, v in sorted(policy.items()))

    seen = {t: canonical(t) for t in texts.dropna().unique()}
    return texts.map(seen).fillna("").astype(object)


def _key_text(col: pd.Series) -> pd.Series:
    """A workload-key column as text, numbers written the same whatever their column's dtype: a
    directory whose failed run left the column empty reads 512 as 512.0, and must still name 512."""
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        v = col.to_numpy(float)
        whole = np.isfinite(v) & (v == np.round(v))
        text = col.astype(str).to_numpy(object)
        text[whole] = v[whole].astype(np.int64).astype(str)
        return pd.Series(text, index=col.index)
    if col.dtype == object:  # mixed numbers and words across directories
        num = pd.to_numeric(col, errors="coerce")
        whole = num.notna() & (num == num.round()) & np.isfinite(num.astype(float))
        text = col.astype(str)
        text[whole] = num[whole].astype(np.int64).astype(str)
        return text
    return col.astype(str)


def _workload_names(df: pd.DataFrame) -> pd.Series:
    """``<workload>:<variant>/<weights>/<steps>/...`` from the app's config columns.

    Built once per distinct configuration and spread to its rows (a campaign has thousands of
    workloads in a million rows), so rows of one workload share one name string.
    """
    keys = [k for k in WORKLOAD_KEYS if k in df.columns and df[k].notna().any()]
    base = df["workload"].astype(str) if "workload" in df else pd.Series("app", index=df.index)
    if not keys:
        return base
    config = pd.concat([base.rename("_base"), df[keys]], axis=1)
    code = config.groupby(list(config.columns), sort=False, dropna=False, observed=True).ngroup().to_numpy()
    unique = config.drop_duplicates()
    name = unique["_base"] + ":" + _key_text(unique[keys[0]])
    for k in keys[1:]:
        name = name + "/" + _key_text(unique[k])
    return pd.Series(name.to_numpy(object)[code], index=df.index)


def add_utilisation(runs: pd.DataFrame) -> None:
    """Achieved TFLOP/s and model FLOP utilisation against the dense peak (configs/gpus.yaml) of the
    run's SKU where the launcher recorded one it knows, else of its GPU type (the family's default SKU)."""
    specs = load_gpu_specs()
    runs["achieved_tflops"] = runs["flops_per_image"] * runs["images"] / runs["time_s"] / 1e12
    dtype = runs["app_dtype"].astype(str) if "app_dtype" in runs else pd.Series("bf16", index=runs.index)
    dtype = dtype.where(dtype.isin(["fp16", "bf16", "fp32"]), "bf16")
    gpu = runs["gpu"].astype(str)
    if "gpu_sku" in runs:
        sku = runs["gpu_sku"].astype(str)
        gpu = sku.where(sku.isin(list(specs)), gpu)
    gpu_code, gpus = pd.factorize(gpu)
    dtype_code, dtypes = pd.factorize(dtype)
    peak = np.array([[(specs.get(g, {}).get("peak_tflops") or {}).get(d) or np.nan for d in dtypes] for g in gpus],
                    dtype=float).reshape(len(gpus), len(dtypes))  # one lookup per (GPU type, dtype)
    runs["mfu"] = runs["achieved_tflops"] / (peak[gpu_code, dtype_code] if len(runs) else np.zeros(0))


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
    frames, batch = [], []
    for p in [*find_result_dirs(paths), None]:
        if p is not None and not p.is_file():
            batch.append(p)  # consecutive results directories are read as one batch
            continue
        if batch:
            frames.append(load_results_dirs(batch, notes))
            batch = []
        if p is None:
            break
        if p.suffix == ".csv":
            try:  # an empty or binary file: said as such, not as a CSV of another layout
                read_text(p, "a reference CSV")
            except RecordError as exc:
                raise DataError(str(exc)) from None
        if p.suffix != ".csv" or not is_reference_csv(p):
            raise DataError(f"{p}: not a results directory nor a reference CSV "
                            "(needs sm_app_clock, application, power_usage, run_time)")
        frames.append(load_reference_csv(p, notes))
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
