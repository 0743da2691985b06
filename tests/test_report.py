"""The report and the notebook: files, plots, the synthetic label, rendering in headless Chromium.

Beyond "it runs": the page must open with the answer, mark the chosen and reference clocks on every
per-clock plot, show what screening left out, stay readable with the 24 reference workloads, and
never force a matplotlib backend on whoever imports it.
"""

from __future__ import annotations

import base64
import html as htmllib
import os
import re
import shutil
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
from conftest import PY, REFERENCE, REPO, requires_reference, run_py
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

REFERENCE_CSVS = sorted(str(p) for p in REFERENCE.glob("*.csv")) if REFERENCE.exists() else []


def _load(paths):
    import warnings

    from power_modeling import feature_table, load_runs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = load_runs(paths)
        return runs, feature_table(runs)


@pytest.fixture(scope="module")
def sim_data(sim_results):
    return _load([sim_results])


@pytest.fixture(scope="module")
def ref_data():
    if not REFERENCE_CSVS:
        pytest.skip(f"reference data not found at {REFERENCE}")
    return _load(REFERENCE_CSVS)


@pytest.fixture(scope="module")
def sim_report(sim_data, tmp_path_factory):
    from power_modeling.report import build_report

    runs, table = sim_data
    return build_report(runs, table, tmp_path_factory.mktemp("simrep"), "edp", 0.05)


def _labels(fig: Figure) -> list[str]:
    """Every artist label in a figure (lines, markers, scatter, bars), legend entries included."""
    out = []
    for ax in fig.axes:
        out += [a.get_label() for a in ax.get_children() if isinstance(a.get_label(), str)]  # Axis: a Text
    for leg in fig.legends:
        out += [t.get_text() for t in leg.get_texts()]
    return out


def _texts(fig: Figure) -> str:
    parts = [t.get_text() for t in fig.texts]
    for name in ("_suptitle", "_supxlabel", "_supylabel"):
        if getattr(fig, name, None) is not None:
            parts.append(getattr(fig, name).get_text())
    parts += _labels(fig)
    return "\n".join(parts)


def _body_text(page: str) -> str:
    body = page.split("<body>", 1)[1]
    return htmllib.unescape(re.sub(r"<[^>]+>", " ", body))


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=\.)\s+(?=[A-Z])", text.strip()) if s]


def _pipe_tables(md: str) -> list[list[str]]:
    """Each Markdown pipe table as its lines (header, separator, rows)."""
    tables, cur = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            tables.append(cur)
            cur = []
    return tables


# --------------------------------------------------------------------------- the page


def test_report_files_and_synthetic_label(sim_results, tmp_path):
    """Also headless proof: figures never go through pyplot, so a GUI backend with no display cannot break it."""
    out = tmp_path / "rep"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "tkagg"
    p = subprocess.run([PY, "-m", "power_modeling", "report", str(sim_results), "--out", str(out)],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr
    for name in ("report.html", "report.md", "features.csv", "choices.csv", "vs_clock.png", "pareto.png",
                 "model_fit.png", "trace_0.png", "phases.png"):
        assert (out / name).stat().st_size > 0, name
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert "SYNTHETIC DATA" in html and "SYNTHETIC DATA" in md
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 4
    from io import BytesIO

    from PIL import Image
    for data in images:
        assert Image.open(BytesIO(base64.b64decode(data))).size[0] > 100


def test_report_opens_with_two_sentences_naming_the_chosen_clock(sim_report):
    choices = pd.read_csv(sim_report["choices"])
    chosen = choices[choices["objective"] == "edp"].iloc[0]
    page = sim_report["html"].read_text()
    body = page.split("<body>", 1)[1]
    assert body.lstrip().startswith('<p class="lead" id="summary">'), body[:200]
    lead = _body_text('<body>' + body.split("</p>", 1)[0])
    sentences = _sentences(lead)
    assert len(sentences) == 2, sentences
    assert f"{chosen['clock_mhz']:.0f} MHz" in sentences[0]
    assert sentences[0].startswith(("Use ", "Keep "))
    # the Markdown opens with the same two sentences, before the title and the synthetic banner
    md = sim_report["markdown"].read_text()
    assert md.startswith("**" + lead.strip())
    assert md.index("SYNTHETIC DATA") > md.index(sentences[1])


def test_one_run_per_clock_says_the_uncertainty_is_unknown(sim_data, tmp_path):
    from power_modeling import feature_table
    from power_modeling.report import NO_ERROR_BARS, build_report, plot_vs_clock

    runs, _ = sim_data
    one = runs[runs["run_index"] == 0].reset_index(drop=True)
    table = feature_table(one)
    files = build_report(one, table, tmp_path, "edp", None)
    html, md = files["html"].read_text(), files["markdown"].read_text()
    lead = _body_text(html).strip()
    assert "uncertainty is unknown" in lead.split("DVFS energy report")[0]
    assert "uncertainty unknown" in html and "uncertainty unknown" in md
    assert "[unknown]" in md
    assert NO_ERROR_BARS in _texts(plot_vs_clock(table, objective="edp", max_slowdown=None))


def test_markdown_tables_are_pipe_tables_without_empty_columns(sim_report):
    md = sim_report["markdown"].read_text()
    tables = _pipe_tables(md)
    assert len(tables) >= 3
    for t in tables:
        assert re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", t[1]), t[1]
        cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in (t[0], *t[2:])]
        for j, name in enumerate(cells[0]):
            assert any(row[j] not in ("", "nan", "None") for row in cells[1:]), f"empty column {name!r}"
    # no default clock was measured: no "vs default" column; the saving columns name their reference
    head = tables[0][0]
    assert "default" not in head
    assert "saved vs 1785 MHz (max)" in head and "slowdown vs 1785 MHz (max)" in head


def test_default_clock_columns_and_left_out_rows(sim_data, tmp_path):
    """A measured default clock gets its own columns and line; a screened-out clock is drawn hollow, unjoined."""
    from power_modeling.report import build_report, plot_vs_clock

    runs, table = sim_data
    d = table[table["sm_clock_mhz"] == table["sm_clock_mhz"].max()].assign(is_default_clock=True, sm_clock_mhz=1980.0)
    table = pd.concat([table, d], ignore_index=True)
    table.loc[table["sm_clock_mhz"] == 1395, "excluded"] = "outlier"
    files = build_report(runs, table, tmp_path, "edp", None)
    md = files["markdown"].read_text()
    assert "saved vs default (1980 MHz, unlocked)" in md
    assert "outlier: 1 clock" in md.split("## ")[0]  # said before the first section
    fig = plot_vs_clock(table, objective="edp", max_slowdown=None)
    assert any("default clock" in label for label in _labels(fig))
    for ax in fig.axes:
        joined = [c.lines[0] for c in ax.containers if c.get_label() == "measured (mean)"]  # errorbar's data line
        assert joined and 1395 not in set(np.asarray(joined[0].get_xdata(), float))
        hollow = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_label().startswith("left out")]
        assert hollow and 1395 in hollow[0].get_offsets()[:, 0]
        assert hollow[0].get_facecolors().size == 0 or (hollow[0].get_facecolors()[:, 3] == 0).all()


def test_times_keep_their_significant_digits(sim_data):
    from power_modeling.report import drop_empty_columns, per_clock_table

    _, table = sim_data
    scale = 3e-4 / table["time_s_mean"].iloc[0]  # sub-millisecond work, whatever the simulated run took
    fast = table.assign(time_s_mean=table["time_s_mean"] * scale, time_s_std=table["time_s_std"] * scale)
    col = next(c for c in per_clock_table(fast).columns if c.startswith("Work time"))
    cell = per_clock_table(fast)[col].iloc[0]
    assert re.match(r"0\.000\d{2,}", cell), cell
    df = pd.DataFrame({"a": [1, 2], "b": [None, np.nan], "c": ["", " "], "d": ["x", ""]})
    assert list(drop_empty_columns(df).columns) == ["a", "d"]


# --------------------------------------------------------------------------- the figures


def test_plot_functions_return_figures_with_the_chosen_clock_marked(sim_data):
    from power_modeling import choose_all
    from power_modeling.report import (
        plot_model_fit,
        plot_pareto,
        plot_phases,
        plot_prediction,
        plot_small_multiples,
        plot_trace,
        plot_vs_clock,
        trace_files,
    )

    runs, table = sim_data
    choices = choose_all(table, "edp", None)
    clock = choices.iloc[0]["clock_mhz"]
    per_clock = {"vs_clock": plot_vs_clock(table, choices, "edp", None),
                 "small_multiples": plot_small_multiples(table, choices, "edp", None),
                 "pareto": plot_pareto(table, choices, "edp", None),
                 "phases": plot_phases(runs, table, choices, "edp", None),
                 "prediction": plot_prediction(table, choices, "edp", None)}
    for name, fig in per_clock.items():
        assert isinstance(fig, Figure), name
        labels = _labels(fig)
        assert any("chosen" in label for label in labels), (name, labels)
        if name != "prediction":
            assert any("max clock" in label for label in labels), (name, labels)
    assert any(f"chosen: {clock:.0f} MHz" in label for label in _labels(per_clock["vs_clock"]))
    assert isinstance(plot_model_fit(table), Figure)
    traces = trace_files(runs, choices)
    assert traces and all(isinstance(plot_trace(p, t), Figure) for p, t in traces)


def test_phase_energies_are_leaves_only(sim_data):
    from power_modeling.report import CONTAINER_PHASES, phase_energy

    runs, table = sim_data
    phases = phase_energy(runs)
    leaves = [c for c in phases.columns if c not in ("workload", "gpu", "sm_clock_mhz", "is_default_clock")]
    assert "denoise_step" in leaves and not set(leaves) & set(CONTAINER_PHASES)
    # the leaves add up to no more than the energy of the run they came from (batch contains denoise_step)
    assert (phases[leaves].sum(axis=1).to_numpy() < 1.2 * table.sort_values("sm_clock_mhz")["energy_j_mean"].max()).all()


@requires_reference()
def test_small_multiples_for_the_24_reference_apps(ref_data, tmp_path):
    from power_modeling.report import build_report, plot_pareto, plot_phases, plot_vs_clock

    runs, table = ref_data
    fig = plot_vs_clock(table)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == len(fig.axes) == 24
    for ax in panels:
        assert ax.get_title() and any(len(ln.get_xdata()) > 10 for ln in ax.get_lines()), ax.get_title()
        assert any(c.get_label() == "chosen clock" for c in ax.get_children()), ax.get_title()
    pareto = plot_pareto(table)
    assert sum(1 for ax in pareto.axes if ax.get_visible() and ax.get_title()) == 24
    assert plot_phases(runs, table) is None
    t0 = time.perf_counter()
    files = build_report(runs, table, tmp_path, "edp", 0.05)
    elapsed = time.perf_counter() - t0
    assert elapsed < 60, f"report on the reference data took {elapsed:.0f} s"
    assert "phases" not in files and not (tmp_path / "phases.png").exists()
    lead = _sentences(_body_text(files["html"].read_text()).split("DVFS energy report")[0])
    assert len(lead) == 2 and re.match(r"For \d+ of 24 workloads", lead[0]), lead
    assert "outlier" in files["markdown"].read_text().split("## ")[0]


# --------------------------------------------------------------------------- backends and inputs


def test_importing_the_report_leaves_the_matplotlib_backend_alone():
    """Importing resolves no backend, and the backend in force before the import is the one after it."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    code = ("import importlib, sys, matplotlib\n"
            "import power_modeling.report\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n"  # get_backend() resolves through pyplot: not before
            "before = matplotlib.get_backend()\n"
            "importlib.reload(power_modeling.report)\n"
            "assert matplotlib.get_backend() == before, (before, matplotlib.get_backend())\n"
            "matplotlib.use('svg')\n"
            "importlib.reload(power_modeling.report)\n"
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
            "print('ok')\n")
    p = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("ok"), p.stderr[-2000:]


def test_results_may_be_a_directory_a_glob_a_list_or_pathsep_joined(sim_results, tmp_path):
    from power_modeling.report import resolve_results

    (tmp_path / "a.csv").write_text("x")
    (tmp_path / "b.csv").write_text("x")
    assert resolve_results(str(sim_results)) == [str(sim_results)]
    assert resolve_results(str(tmp_path / "*.csv")) == [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    assert resolve_results([sim_results, str(tmp_path / "a.csv")]) == [str(sim_results), str(tmp_path / "a.csv")]
    joined = os.pathsep.join([str(sim_results), str(tmp_path / "b*.csv")])
    assert resolve_results(joined) == [str(sim_results), str(tmp_path / "b.csv")]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        resolve_results(str(tmp_path / "nothing*.csv"))


# --------------------------------------------------------------------------- browser and notebook

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")
def test_report_renders_in_headless_chromium_without_broken_images(sim_results, tmp_path):
    out = tmp_path / "rep"
    assert run_py("-m", "power_modeling", "report", str(sim_results), "--out", str(out)).returncode == 0
    probe = out / "probe.html"
    check = ("<script>window.addEventListener('load',()=>{const b=[...document.images].filter(i=>!i.complete||"
             "i.naturalWidth===0).length;const w=document.documentElement.scrollWidth>window.innerWidth?1:0;"
             "document.body.setAttribute('data-check','images='+document.images.length+';broken='+b+';wide='+w);"
             "});</script>")
    probe.write_text((out / "report.html").read_text().replace("</body>", check + "</body>"))
    p = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,2400",
                        f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=5000", "--dump-dom",
                        probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'data-check="images=(\d+);broken=(\d+);wide=(\d+)"', p.stdout)
    assert m, p.stderr[-2000:]
    assert int(m.group(1)) >= 4 and int(m.group(2)) == 0
    assert int(m.group(3)) == 0, "the page is wider than a 1280 px window"


def _run_notebook() -> list:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def test_notebook_runs(sim_results, monkeypatch):
    monkeypatch.setenv("RESULTS_DIR", str(sim_results))
    outputs = _run_notebook()
    text = "".join(o.get("text", "") for o in outputs)
    assert "EDP-optimal clock" in text and "SYNTHETIC DATA" in text
    assert not [o for o in outputs if o.get("name") == "stderr"], "warnings or errors printed"
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 6


@requires_reference()
def test_notebook_runs_on_a_glob_of_the_reference_csvs(monkeypatch):
    rel = os.path.relpath(REFERENCE, REPO / "notebooks")
    monkeypatch.setenv("RESULTS_DIR", f"{rel}/*.csv")
    outputs = _run_notebook()
    text = "".join(o.get("text", "") for o in outputs)
    assert "24 workload(s)" in text and "EDP-optimal clock" in text and "SYNTHETIC DATA" not in text
    assert "No per-phase energies" in text
    assert not [o for o in outputs if o.get("name") == "stderr"], "warnings or errors printed"


def test_notebook_is_committed_without_outputs():
    import nbformat

    nb = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")

