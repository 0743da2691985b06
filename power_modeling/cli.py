"""``python -m power_modeling {features,fit,predict,select,report,merge} RESULTS... [--out DIR]``.

Each command imports what it uses when it runs (pandas to read, scikit-learn to fit, matplotlib to
plot), so ``--help`` and the commands that neither fit nor plot start without paying for the rest.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import click

from profiling.cli_support import run_cli
from sd_energy_contract.errors import InputError

from .errors import DataError
from .objectives import OBJECTIVES

if TYPE_CHECKING:
    import pandas as pd

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
# ``fit --model physical`` columns: models.physical_fit_table's, under the names this CSV has always had.
PHYSICAL_FIT_COLUMNS = {"workload": "workload", "time_a_s": "time_a_s", "time_b_s_ghz": "time_b_s_ghz",
                        "power_c_w": "power_c_w", "power_d_w_per_ghz": "power_d", "power_e_w_per_ghz3": "power_e",
                        "time_mape": "time_mape", "power_mape": "power_mape"}
BAND_BOOTSTRAP = 200  # resamples behind predict's 90 % band


def _common(f):
    f = click.option("--out", "out", default=None, help="Output directory (default: print only).")(f)
    f = click.option("--gpu", default=None, help="GPU type to use when the data mixes several.")(f)
    f = click.argument("results", nargs=-1, required=True)(f)
    return f


def _finite_slowdown(ctx, param, value: float) -> float:
    """``--max-slowdown`` NaN would silently disable every comparison and inf means nothing a negative doesn't."""
    if not math.isfinite(value):
        raise InputError("--max-slowdown", value, "must be a finite number (0.05 = 5 %; negative: no limit)")
    return value


def _objective(f):
    f = click.option("--objective", default="edp", type=click.Choice(OBJECTIVES), show_default=True)(f)
    f = click.option("--max-slowdown", default=0.05, type=float, show_default=True, callback=_finite_slowdown,
                     help="Allowed slowdown vs the max clock (0.05 = 5 %); negative = no limit.")(f)
    return f


def parse_clocks(text: str) -> list[float]:
    """``--clocks 1410,1200``: finite, positive MHz, at least one; anything else names the value."""
    items = [c.strip() for c in text.split(",") if c.strip()]
    if not items:
        raise InputError("--clocks", repr(text), "no clock in it (comma-separated MHz, e.g. 1410,1200)")
    clocks = []
    for item in items:
        try:
            f = float(item)
        except ValueError:
            raise InputError("--clocks", text, f"{item!r} is not a number (comma-separated MHz)") from None
        if not math.isfinite(f) or f <= 0:
            raise InputError("--clocks", text, f"{item!r} is not a clock (a positive number of MHz)")
        clocks.append(f)
    return clocks


def _load(results, gpu, need_clocks: int = 0):
    """Runs and the feature table of one GPU type (``--gpu``; several types without it is an error)."""
    from . import features as feat
    from .io import load_runs

    warnings.filterwarnings("ignore")
    notes: list[str] = []
    try:
        runs = feat.select_gpu(load_runs(list(results), notes), gpu)
        table = feat.feature_table(runs)
        if need_clocks:
            feat.check_fittable(table, need_clocks)
    except DataError as exc:
        opt = "--gpu" if str(exc).startswith("--gpu") or "--gpu" in str(exc) else "RESULTS"
        raise InputError(opt, None, str(exc).removeprefix(f"--gpu {gpu}: ")) from None
    finally:  # said even when the data then fails: the skipped rows may be why
        for text in notes:
            click.echo(f"warning: {text}", err=True)
    return runs, table


def show(df: pd.DataFrame) -> str:
    """A table for the terminal with significant digits: a 1.2 ms kernel is not "0.00 s"."""
    if df.empty:
        return "(none)"
    return df.to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep="-")


class Progress:
    """``fold 3/24 (bfs), 12 s`` on stderr once a loop has run for a few seconds: silent when quick.

    A terminal gets one line rewritten in place; a file (a SLURM .out) gets timestamped lines.
    """

    def __init__(self, what: str, after_s: float = 3.0):
        self.what, self.after_s, self.t0 = what, after_s, time.monotonic()
        self.tty = sys.stderr.isatty()
        self.shown = False

    def __call__(self, done: int, total: int, item: str) -> None:
        elapsed = time.monotonic() - self.t0
        if elapsed < self.after_s:
            return
        eta = f", about {elapsed / done * (total - done):.0f} s left" if done else ""
        line = f"{self.what} {done + 1}/{total} ({item}), {elapsed:.0f} s{eta}"
        if self.tty:
            click.echo(f"\r{line}\033[K", err=True, nl=False)
        else:
            click.echo(f"{time.strftime('%H:%M:%S')} {line}", err=True)
        self.shown = True

    def close(self) -> None:
        if self.shown and self.tty:
            click.echo("", err=True)


def _cross_model_factory(table: pd.DataFrame):
    """CrossWorkloadModel with activity counters when every workload has them (DCGM, the reference
    data), without them otherwise (NVML-only runs such as the Stable Diffusion sweeps)."""
    from .models import CrossWorkloadModel, activity_columns

    has_activity = bool(activity_columns(table))
    return lambda: CrossWorkloadModel(use_activity=has_activity)


def _say_folds(table: pd.DataFrame) -> None:
    """Where leave-one-workload-out holds out groups instead of single workloads, say so (stderr)."""
    from .models import MAX_FOLDS

    n = table["workload"].nunique()
    if n > MAX_FOLDS:
        click.echo(f"note: {n} workloads: held out in {MAX_FOLDS} groups (every {MAX_FOLDS}th workload together), "
                   "each predicted by a model that never saw it", err=True)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    """A table to CSV (``bulkcsv.write_csv``: pandas' bytes, faster), imported when a command writes one."""
    from .bulkcsv import write_csv

    write_csv(df, path)


def _slowdown(v: float) -> float | None:
    return None if v < 0 else v


def _out(out: str | None) -> Path | None:
    if out is None:
        return None
    p = Path(out)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError("--out", out, exc.strerror or "cannot create") from None
    return p


class _Group(click.Group):
    """A ``DataError`` from any step (a model given data it cannot use, say) is a user's input problem:
    one line naming what is wrong, exit 2, like every other error of this command line."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DataError as exc:
            raise InputError("RESULTS", None, str(exc)) from None


@click.group(cls=_Group, context_settings=CONTEXT)
def cli():
    """From launcher results (or the reference V100 tables) to feature tables, models, optimal clocks and reports."""


@cli.command()
@_common
def features(results, gpu, out):
    """Per (workload, GPU, clock) table: mean, std, CV, count; noisy groups flagged."""
    runs, table = _load(results, gpu)
    cols = ["workload", "sm_clock_mhz", "n_runs", "time_s_mean", "time_s_cv", "power_w_mean", "energy_j_mean",
            "energy_j_cv", "noisy"]
    click.echo(show(table[cols + ["excluded", "excluded_runs"]].fillna({"excluded_runs": ""})))
    if (o := _out(out)) is not None:
        _write_csv(table, o / "features.csv")
        _write_csv(runs, o / "runs_tidy.csv")
        click.echo(f"wrote {o / 'features.csv'}")


@cli.command()
@_common
@click.option("--model", "kind", default="physical", type=click.Choice(["physical", "cross", "fgcs"]), show_default=True)
@click.option("--save", "save", default=None, metavar="FILE",
              help="cross: also fit on every workload and save the model (safe skops format) for "
                   "launch.sh --guided-model FILE.")
def fit(results, gpu, out, kind, save):
    """Fit a model. physical: per workload; cross/fgcs: across workloads with leave-one-workload-out CV."""
    if save is not None and kind != "cross":
        raise InputError("--save", save, "only a cross-workload model can be saved (add --model cross)")
    if save is not None and not Path(save).parent.is_dir():
        raise InputError("--save", save, "its directory does not exist")
    from .models import FGCSModel, leave_one_workload_out, physical_fit_table, usable

    runs, table = _load(results, gpu, need_clocks=3)
    if kind == "physical":
        fits = physical_fit_table(table)[0]
        result = fits.reindex(columns=list(PHYSICAL_FIT_COLUMNS)).rename(columns=PHYSICAL_FIT_COLUMNS)
    else:
        if table["workload"].nunique() < 3:
            raise InputError("--model", kind, f"needs at least 3 workloads for cross-validation, "
                            f"the data has {table['workload'].nunique()}")
        make = _cross_model_factory(table) if kind == "cross" else FGCSModel
        _say_folds(table)
        progress = Progress("leave-one-workload-out: fold")
        try:
            result = leave_one_workload_out(table, make, progress=progress)
        except DataError as exc:
            raise InputError("--model", kind, str(exc)) from None
        finally:
            progress.close()
        means = result[[c for c in result.columns if c.endswith(("_mape", "_r2"))]].mean()
        click.echo("leave-one-workload-out: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
        if save is not None:
            from .model_store import save_model

            model = make().fit(usable(table))
            meta = {"trained_on": sorted(str(s) for s in runs["source"].unique()),
                    "lowo": {k: round(float(v), 5) for k, v in means.items()}}
            path = save_model(model, save, meta)
            click.echo(f"saved {path} ({len(model.workloads_)} workloads, {', '.join(model.trained_gpus_)}; "
                       f"{'with' if model.activity_names_ else 'without'} activity counters)")
    click.echo(show(result))
    if (o := _out(out)) is not None:
        _write_csv(result, o / f"fit_{kind}.csv")


@cli.command()
@_common
@click.option("--clocks", required=True, help="Comma-separated SM clocks (MHz) to predict at.")
def predict(results, gpu, out, clocks):
    """Predict power, time and energy at given clocks (per-workload physical model, 90 % band)."""
    import pandas as pd

    from .models import physical_fits

    fs = parse_clocks(clocks)
    runs, table = _load(results, gpu, need_clocks=3)
    rows = []
    for wl, g, m in physical_fits(table, n_bootstrap=BAND_BOOTSTRAP):
        t, p = m.predict(fs)
        band = m.predict_interval(fs)
        for i, f in enumerate(fs):
            rows.append({"workload": wl, "sm_clock_mhz": f, "time_s": t[i], "power_w": p[i], "energy_j": t[i] * p[i],
                         "energy_j_p05": band["energy_j"][i, 0], "energy_j_p95": band["energy_j"][i, 1],
                         "extrapolated": not (g["sm_clock_mhz"].min() <= f <= g["sm_clock_mhz"].max())})
    result = pd.DataFrame(rows)
    click.echo(show(result))
    if (o := _out(out)) is not None:
        _write_csv(result, o / "predictions.csv")


CHOICE_COLUMNS = ["workload", "objective", "clock_mhz", "verdict", "reference_clock_mhz", "energy_saved_pct",
                  "energy_saved_lo_pct", "energy_saved_hi_pct", "slowdown_pct", "slowdown_lo_pct", "slowdown_hi_pct",
                  "best_measured_mhz", "fitted_mhz", "runs_at_choice", "excluded_rows"]


def _choose_on(f):
    return click.option("--choose-on", default="measured", type=click.Choice(["measured", "fit"]), show_default=True,
                        help="measured: the best clock's own mean; fit: the optimum of smoothed per-workload curves "
                             "(for noisy single-run sweeps). Both optima are reported either way.")(f)


@cli.command()
@_common
@_objective
@_choose_on
@click.option("--guided", type=int, default=0, help="Also evaluate the guided choice with this many probe clocks.")
def select(results, gpu, out, objective, max_slowdown, choose_on, guided):
    """The clock that minimises the objective within the slowdown budget, per workload, with 95 % intervals."""
    from .selection import choose_all, evaluate_guided

    runs, table = _load(results, gpu, need_clocks=2)
    choices = choose_all(table, objective, _slowdown(max_slowdown), choose_on)
    click.echo(show(choices[CHOICE_COLUMNS]))
    for text in choices["summary"]:
        click.echo(text)
    if guided:
        if guided < 2:
            raise InputError("--guided", guided, "needs at least 2 probe clocks")
        if table["workload"].nunique() < 3:
            raise InputError("--guided", guided, "needs at least 3 workloads to train the cross-workload model")
        _say_folds(table)
        progress = Progress("guided search: workload")
        try:
            reg = evaluate_guided(table, _cross_model_factory(table), objective, guided, _slowdown(max_slowdown),
                                  progress=progress)
        finally:
            progress.close()
        click.echo(show(reg))
        click.echo(f"guided ({guided} probes): mean regret {reg['regret_pct'].mean():.2f} %, "
                   f"p90 {reg['regret_pct'].quantile(0.9):.2f} %")
    if (o := _out(out)) is not None:
        _write_csv(choices, o / f"choices_{objective}.csv")


@cli.command()
@_common
@_objective
@_choose_on
def report(results, gpu, out, objective, max_slowdown, choose_on):
    """HTML + Markdown report with plots and CSV tables (default --out: RESULTS/report, or beside a CSV)."""
    from .report import build_report

    runs, table = _load(results, gpu, need_clocks=2)
    first = Path(results[0])
    out_dir = _out(out) or _out(str((first.parent if first.is_file() else first) / "report"))
    files = build_report(runs, table, out_dir, objective, _slowdown(max_slowdown), choose_on=choose_on)
    if runs["synthetic"].any():
        click.echo("note: synthetic data (simulated GPU); the report says so on every page")
    click.echo(f"report: {files['html']}")


@cli.command()
@_common
def merge(results, gpu, out):
    """One tidy runs table from many results directories (e.g. a SLURM array sweep)."""
    runs, _ = _load(results, gpu)
    click.echo(f"{len(runs)} runs from {runs['source'].nunique()} directories, "
               f"{runs['sm_clock_mhz'].nunique()} clocks")
    if (o := _out(out)) is not None:
        _write_csv(runs, o / "runs_merged.csv")
        (o / "sources.json").write_text(json.dumps(sorted(runs["source"].unique()), indent=2))
        click.echo(f"wrote {o / 'runs_merged.csv'}")


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def one_thread_pools() -> bool:
    """Size BLAS/OpenMP pools to one thread in this process unless the user chose (True if it could).

    Nothing here gains from more: the fits and smoothers work on matrices of tens to thousands of
    rows, where a second thread only waits on the first, and on a small or busy node idle pool
    threads spin for a core they do not get (``select --guided 4`` on the reference data burnt
    26.6 CPU-s with the default pools beside a CPU hog, 22.1 with one thread). Pools are sized when
    numpy, scipy or scikit-learn load, so this works only before they are imported: in a fresh
    ``python -m power_modeling``, not when a test or notebook calls ``main`` after importing them
    (there the models cap their own pools, ``CrossWorkloadModel(n_threads=1)``).
    """
    if any(m in sys.modules for m in ("numpy", "scipy", "sklearn")):
        return False
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
    return True


def main(args: list[str] | None = None) -> int:
    one_thread_pools()
    return run_cli(cli, args, prog_name="python -m power_modeling")


if __name__ == "__main__":
    sys.exit(main())
