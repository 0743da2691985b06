"""power_modeling at a centre's scale: load, screen, choose, report and fit 1 k to 1 M launcher runs.

    .venv/bin/python benchmarks/bench_scale.py                       # 1 k, 10 k, 100 k runs
    .venv/bin/python benchmarks/bench_scale.py --runs 1000000        # the 1 M case (minutes; run it alone)
    .venv/bin/python benchmarks/bench_scale.py --runs 10000 --samples-per-run   # every run with a samples file
    .venv/bin/python benchmarks/bench_scale.py --runs --reference ../shared/data/reference --cli --threads-check

Each size is a fresh child process (so its peak RSS is its own) that writes synthetic results as
the launcher lays them out: ``--runs-per-dir`` runs per results directory (a SLURM array task or
one sweep), 20 H100 clocks x 5 repeats of one workload per directory (``runs.csv`` with every
column of ``sd_energy_contract.layout.RUNS_COLUMNS``, the app's config as ``app_*``, phase
energies as the launcher writes them, a ``manifest.json``), plus ``--samples`` per-run samples
files in all (NVML columns, a 2 s trace at 10 ms). The data follow the simulated H100's form with
2 % run noise, a cold first run per sweep and one glitched repeat per sweep, so screening works.
It then times, in that process: ``load_runs``, ``feature_table``, ``choose_all`` (EDP, 5 % cap),
``build_report`` and the per-workload physical fit, and reports the peak RSS (``getrusage``).

``--reference DIR`` also times ``fit --model cross`` and ``select --guided 4`` on the reference
applications, and ``--cli`` the start-up of ``python -m power_modeling --help`` and of ``select``
on the 1 k directory set (median of 5), each as its own process, as a user runs them.
``--threads-check`` (with ``--reference``) runs those two commands with BLAS/OpenMP pools of one
thread and of one per core, on the host as it is and beside one CPU hog per core (started and
stopped by the benchmark), in random order, and prints wall and CPU seconds (median of ``--repeats``).

Threads are pinned to one (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` set
to 1 in every child) so the figures do not depend on how BLAS/OpenMP size their pools on the host;
``--threads N`` changes that. The load average is printed before and after: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLOCKS = np.arange(1785, 344, -75)[:20]          # 20 of the H100's clocks, 1785 .. 360 MHz
REPEATS = 5
TRACE_S, TRACE_DT = 2.0, 0.01
PHASES = ("text_encode", "denoise_step", "vae_decode", "save")


# --------------------------------------------------------------------------- synthetic results

def _csv_lines(df) -> list[str]:
    """The rows of ``df`` as CSV lines (header first), quoted as the launcher's csv writer quotes them."""
    return df.to_csv(index=False, lineterminator="\n").splitlines(keepends=True)


def make_results(root: Path, runs: int, runs_per_dir: int, samples: int | str, seed: int = 0) -> list[Path]:
    """``runs`` launcher rows in directories of ``runs_per_dir`` under ``root``; returns the directories.

    One workload per directory (an app config: variant, steps, size, batch), its clocks x repeats in
    the launcher's order; consecutive directories repeat a workload when ``runs_per_dir`` is smaller
    than one sweep (array tasks of one sweep), and a directory holds several workloads when it is
    larger (a merged campaign: run ids stay unique).
    """
    import pandas as pd

    from sd_energy_contract.layout import RUNS_COLUMNS

    rng = np.random.default_rng(seed)
    per_wl = len(CLOCKS) * REPEATS
    workloads = max(1, runs // per_wl)
    n = workloads * per_wl
    wl = np.repeat(np.arange(workloads), per_wl)
    f = np.tile(np.repeat(CLOCKS, REPEATS), workloads)
    idx = np.tile(np.arange(REPEATS), workloads * len(CLOCKS))
    x = f / CLOCKS[0]
    cb = rng.uniform(0.2, 0.9, workloads)[wl]                       # compute-bound share of the work
    t = rng.uniform(1, 60, workloads)[wl] * (cb / x + 1 - cb) * (1 + 0.02 * rng.standard_normal(n))
    p = (61 + 60 + 260 * x * np.maximum(0.62, x) ** 2) * (1 + 0.02 * rng.standard_normal(n))
    first = np.r_[True, wl[1:] != wl[:-1]]
    t[first] *= 4                                                   # the job's cold first run
    p[(f == CLOCKS[9]) & (idx == 0)] *= 0.6                         # one glitched repeat per workload
    e = t * p
    variants = np.array(["sd-v1.5", "sd-v2.1", "sdxl", "sd3-medium", "flux-schnell"])
    shares = (0.02, 0.9, 0.07, 0.01)
    part = '"{ph}": {{"energy_j": {e:.4f}, "seconds": {s:.4f}, "spans": 1, "source": "counter", "confidence": "ok"}}'
    phase_json = ["{" + ", ".join(part.format(ph=ph, e=v * sh, s=w * sh) for ph, sh in zip(PHASES, shares, strict=True))
                  + f', "batch": {{"energy_j": {v:.4f}, "source": "counter", "confidence": "ok", "contains": '
                  + json.dumps(list(PHASES)) + "}}" for v, w in zip(e, t, strict=True)]  # one text per run, as measured
    df = pd.DataFrame({c: "" for c in RUNS_COLUMNS}, index=range(n))
    df = df.assign(
        run_id=[f"f{c:04d}_r{i:02d}" for c, i in zip(f, idx, strict=True)], sm_clock_target_mhz=f, run_index=idx,
        warmup=0, status="ok", exit_code=0, start_utc="2026-11-25T04:43:10.858100+00:00", wall_s=np.round(t + 3, 4),
        work_s=np.round(t, 4), energy_j=np.round(e * 1.05, 4), energy_counter_j=np.round(e * 1.05, 4),
        energy_integrated_j=np.round(e * 1.051, 4), work_energy_j=np.round(e, 4), avg_power_w=np.round(p, 4),
        max_power_w=np.round(p * 1.1, 1), idle_power_w=61.0, work_avg_power_w=np.round(p, 4), images=4,
        energy_per_image_j=np.round(e / 4, 4), edp_js=np.round(e * t, 4), ed2p_js2=np.round(e * t * t, 4),
        sm_clock_mean_mhz=f.astype(float), sm_clock_readback_mhz=f.astype(float), clock_mismatch=0,
        mem_clock_mean_mhz=2619.0, gpu_util_mean_pct=97.5, temp_max_c=73.1, samples=int(TRACE_S / TRACE_DT),
        backend="nvml", gpu_name="NVIDIA H100 NVL", gpu_type="H100", gpu_uuid="GPU-0000", workload="StableDiffusion",
        phase_energy_json=phase_json, flops_per_image=7.48e12,
        app_model_variant=variants[wl % len(variants)], app_weights="pretrained", app_scheduler="euler",
        app_dtype="bf16", app_attention="sdpa", app_height=512 + 64 * ((wl // 5) % 8),
        app_width=512 + 64 * ((wl // 5) % 8), app_steps=20 + (wl // 40) % 30, app_batch_size=1 + (wl // 1200),
        app_guidance_scale=7.5, app_device="cuda", mode="process", clock_method="locked",
        power_source="instantaneous", energy_source="counter", energy_confidence="ok", energy_update_period_s=0.1,
        temp_start_c=41.0, settle_wait_s=0.2, gpu_sku="NVIDIA H100 NVL", mig=0, twin_host_bound_s="")
    # Unique ids across a merged directory of many workloads (a launcher directory holds one sweep).
    if runs_per_dir > per_wl:
        df["run_id"] = [f"w{w:06d}_{r}" for w, r in zip(wl, df["run_id"], strict=True)]
    lines = _csv_lines(df)
    header, body = lines[0], lines[1:]
    manifest = json.dumps({"gpu_type": "H100", "backend": "nvml", "synthetic": False, "gpu_name": "NVIDIA H100 NVL"})
    dirs = []
    for k, a in enumerate(range(0, n, runs_per_dir)):
        d = root / f"task{k:06d}"
        d.mkdir(parents=True)
        (d / "runs.csv").write_text(header + "".join(body[a:a + runs_per_dir]))
        (d / "manifest.json").write_text(manifest)
        dirs.append(d)
    _write_samples(df, dirs, runs_per_dir, n if samples == "all" else int(samples))
    return dirs


def _write_samples(df, dirs: list[Path], runs_per_dir: int, count: int) -> None:
    """``count`` samples files (NVML columns and phases, no activity counters), spread over the runs."""
    if count <= 0:
        return
    k = int(TRACE_S / TRACE_DT)
    mono = np.arange(k) * TRACE_DT + 1000.0
    phase = np.where(mono < 1000.1, "process", np.where(mono < 1001.8, "denoise_step", "vae_decode"))
    which = np.unique(np.linspace(0, len(df) - 1, count).astype(int))
    for i in which:
        p = float(df["avg_power_w"].iat[i])
        text = "mono_s,power_w,energy_mj,sm_clock_mhz,mem_clock_mhz,gpu_util_pct,mem_used_mib,temp_c,phase\n" + "".join(
            f"{m:.6f},{p:.6f},{(m - 1000) * p * 1000:.6f},{df['sm_clock_target_mhz'].iat[i]},2619,100.000000,"
            f"2048.000000,60.000000,{ph}\n" for m, ph in zip(mono, phase, strict=True))
        d = dirs[i // runs_per_dir] / "samples"
        d.mkdir(exist_ok=True)
        (d / f"{df['run_id'].iat[i]}.csv").write_text(text)


# --------------------------------------------------------------------------- one size, in a child

def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def analyse(campaign: Path, report: bool) -> dict:
    """Time each stage on ``campaign`` in this process (a fresh one: the peak RSS is the analysis's own)."""
    warnings.filterwarnings("ignore")
    out: dict = {"rss_start_mb": peak_rss_mb()}
    from power_modeling import choose_all, feature_table, load_runs
    from power_modeling.models import physical_fits

    t0 = time.perf_counter()
    df = load_runs([campaign])
    out["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = feature_table(df)
    out["features_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    choices = choose_all(table, "edp", 0.05)
    out["select_s"] = time.perf_counter() - t0
    if report:
        from power_modeling.report import build_report

        t0 = time.perf_counter()
        build_report(df, table, campaign.parent / "report", "edp", 0.05)
        out["report_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fits = sum(1 for _ in physical_fits(table))
    out["fit_physical_s"] = time.perf_counter() - t0
    out.update(loaded=len(df), workloads=int(table["workload"].nunique()), fits=fits,
               verdicts=choices["verdict"].value_counts().to_dict(), peak_rss_mb=peak_rss_mb())
    return out


# --------------------------------------------------------------------------- the parent

def _env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def _child(cmd: list[str], env: dict) -> dict:
    """Run one step of the benchmark in its own process; its last stdout line is a JSON dict."""
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd[1:4])} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def _timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _cpu_timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall s, CPU s) of one command: the CPU seconds of all its threads, which oversubscription inflates."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = _timed(cmd, env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def thread_check(reference: Path, repeats: int) -> None:
    """``fit --model cross`` and ``select --guided 4`` with BLAS/OpenMP pools of one thread and of one per
    core (the libraries' default), on the host as it is and beside one CPU hog per core, in random order."""
    refs = sorted(str(p) for p in reference.glob("*.csv"))
    pm = [sys.executable, "-m", "power_modeling"]
    commands = {"fit --model cross": [*pm, "fit", *refs, "--model", "cross"],
                "select --guided 4": [*pm, "select", *refs, "--guided", "4"]}
    cases = [(load, pools, name) for load in ("as is", "hogs") for pools in (1, os.cpu_count())
             for name in commands for _ in range(repeats)]
    results: dict[tuple, list[tuple[float, float]]] = {}
    rng = np.random.default_rng()
    for load in ("as is", "hogs"):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)
                ] if load == "hogs" else []
        try:
            mine = [c for c in cases if c[0] == load]
            for k in rng.permutation(len(mine)):
                _, pools, name = mine[k]
                results.setdefault(mine[k], []).append(_cpu_timed(commands[name], _env(pools)))
        finally:
            for h in hogs:
                h.kill()
                h.wait()
    print(f"{'command':<20} {'host':<26} {'pools':>5} {'wall s':>7} {'CPU s':>7}")
    for (load, pools, name), runs in sorted(results.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        host = "as is" if load == "as is" else f"+{os.cpu_count()} CPU hogs"
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"{name:<20} {host:<26} {pools:>5} {wall:>7.1f} {cpu:>7.1f}")


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, nargs="*", default=[1_000, 10_000, 100_000])
    ap.add_argument("--runs-per-dir", type=int, default=100, help="runs per results directory (100: one sweep)")
    ap.add_argument("--samples", type=int, default=20, help="samples files in all (a few: the analysis needs none)")
    ap.add_argument("--samples-per-run", action="store_true", help="a samples file for every run")
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reference", type=Path, default=None, help="reference CSV dir: time fit --model cross, "
                                                                   "select --guided 4")
    ap.add_argument("--cli", action="store_true", help="time python -m power_modeling --help and select")
    ap.add_argument("--threads-check", action="store_true", help="with --reference: one-thread vs default pools, "
                                                                  "on the host as is and beside CPU hogs")
    ap.add_argument("--repeats", type=int, default=1, help="repeats per --threads-check case (median)")
    ap.add_argument("--generate", type=Path, help=argparse.SUPPRESS)   # child: write one size's results there
    ap.add_argument("--analyse", type=Path, help=argparse.SUPPRESS)    # child: time the stages on them
    args = ap.parse_args()
    samples = "all" if args.samples_per_run else args.samples
    if args.generate is not None:
        t0 = time.perf_counter()
        dirs = make_results(args.generate, args.runs[0], args.runs_per_dir, samples)
        print(json.dumps({"dirs": len(dirs), "generate_s": time.perf_counter() - t0}))
        return
    if args.analyse is not None:
        print(json.dumps(analyse(args.analyse, not args.no_report)))
        return
    env = _env(args.threads)
    print(f"threads pinned: {args.threads}; cores: {os.cpu_count()}; load average before: {_load()}")
    head = (f"{'runs':>9} {'dirs':>6} {'workloads':>9} {'load s':>7} {'features s':>10} {'select s':>8} "
            f"{'report s':>8} {'sum s':>7} {'fit phys s':>10} {'peak RSS MB':>11}")
    rows = []
    for n in args.runs:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            campaign = Path(tmp) / "campaign"
            gen = [sys.executable, __file__, "--runs", str(n), "--generate", str(campaign), "--runs-per-dir",
                   str(args.runs_per_dir), "--samples", str(args.samples)] + ["--samples-per-run"] * args.samples_per_run
            res = _child(gen, env)
            res["runs"] = n
            res.update(_child([sys.executable, __file__, "--analyse", str(campaign)]
                              + ["--no-report"] * args.no_report, env))
        rows.append(res)
        total = res["load_s"] + res["features_s"] + res["select_s"] + res.get("report_s", 0.0)
        print(f"generated {res['runs']} runs in {res['dirs']} directories in {res['generate_s']:.0f} s; "
              f"verdicts {res['verdicts']}", file=sys.stderr)
        rows[-1]["line"] = (f"{res['loaded']:>9} {res['dirs']:>6} {res['workloads']:>9} {res['load_s']:>7.2f} "
                            f"{res['features_s']:>10.2f} {res['select_s']:>8.2f} {res.get('report_s', float('nan')):>8.2f} "
                            f"{total:>7.2f} {res['fit_physical_s']:>10.2f} {res['peak_rss_mb']:>11.0f}")
    if rows:
        print(head)
        for r in rows:
            print(r["line"])
    if args.reference is not None:
        refs = sorted(str(p) for p in args.reference.glob("*.csv"))
        pm = [sys.executable, "-m", "power_modeling"]
        print(f"fit --model cross   (24 reference apps): {_timed([*pm, 'fit', *refs, '--model', 'cross'], env):6.1f} s")
        print(f"select --guided 4   (24 reference apps): {_timed([*pm, 'select', *refs, '--guided', '4'], env):6.1f} s")
    if args.threads_check:
        if args.reference is None:
            sys.exit("--threads-check needs --reference DIR")
        thread_check(args.reference, args.repeats)
    if args.cli:
        with tempfile.TemporaryDirectory(prefix="bench-scale-cli-") as tmp:
            make_results(Path(tmp), 1000, args.runs_per_dir, 0)
            pm = [sys.executable, "-m", "power_modeling"]
            for name, cmd in (("--help", [*pm, "--help"]), ("select (1 k runs)", [*pm, "select", tmp]),
                              ("features (1 k runs)", [*pm, "features", tmp])):
                times = [_timed(cmd, env) for _ in range(5)]
                print(f"python -m power_modeling {name:<20} median {statistics.median(times):.2f} s "
                      f"(min {min(times):.2f}, max {max(times):.2f}, 5 runs)")
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
