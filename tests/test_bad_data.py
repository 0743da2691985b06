"""Bad input, table by table: every case is one clean line (``error: ...``, exit 2, no traceback,
nothing written) or, for data, damaged rows skipped with a count said on stderr.

Covers power_modeling on corrupted results directories and options, the replay backend's sources,
and SLURM site/experiment validation and rendering. Every command runs in this process (the
CLIs' ``main``), on one results directory recorded once per module, so the file stays fast.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from conftest import FAKE_APP, REPO

from power_modeling.cli import main as pm_main
from profiling.launch import main as launch_main
from profiling.slurm import load_site, render
from profiling.slurm import main as slurm_main

CLOCKS = (1785, 1395, 990)
RUNS = 2 * len(CLOCKS)
Edit = Callable[[Path], None]


# --------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A results directory recorded by the launcher (simulated H100, the fake app): 3 clocks x 2 runs."""
    root = tmp_path_factory.mktemp("recorded")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SD_ENERGY_SIMULATED_DIR", str(root / "gpu"))
        mp.setenv("SD_ENERGY_LOCK_DIR", str(root / "locks"))
        rc = launch_main(["--profiling-tool", "simulated", "--gpu-type", "H100", "--profiling-mode", "custom",
                          "--custom-frequencies", ",".join(map(str, CLOCKS)), "--num-runs", "2",
                          "--sleep-interval", "0", "--idle-seconds", "0", "--sampling-interval", "10",
                          "--app-executable", FAKE_APP, "--app-params", "ok 0.05", "--output-dir", str(root / "res")])
    assert rc == 0
    return root / "res"


def copy_of(recorded: Path, tmp_path: Path, edit: Edit | None = None) -> Path:
    d = tmp_path / "res"
    shutil.copytree(recorded, d)
    if edit is not None:
        edit(d)
    return d


def write(rel: str, data: str | bytes) -> Edit:
    def edit(d: Path) -> None:
        path = d / rel
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return edit


def append(rel: str, text: str) -> Edit:
    def edit(d: Path) -> None:
        with open(d / rel, "a") as fh:
            fh.write(text)
    return edit


def set_cells(changes: dict[tuple[int, str], str]) -> Edit:
    """runs.csv with cells replaced: {(data row index, column): new text}."""
    def edit(d: Path) -> None:
        rows = list(csv.reader(io.StringIO((d / "runs.csv").read_text())))
        for (i, col), value in changes.items():
            rows[i + 1][rows[0].index(col)] = value
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        (d / "runs.csv").write_text(buf.getvalue())
    return edit


def both(*edits: Edit) -> Edit:
    def edit(d: Path) -> None:
        for e in edits:
            e(d)
    return edit


def repeated_header(d: Path) -> None:
    """Two launchers appended to one runs.csv: the second wrote the header again, then its rows."""
    lines = (d / "runs.csv").read_text().splitlines(keepends=True)
    (d / "runs.csv").write_text("".join(lines[:4] + [lines[0]] + lines[4:]))


def every_samples_file(data: bytes) -> Edit:
    def edit(d: Path) -> None:
        for f in (d / "samples").glob("*.csv"):
            f.write_bytes(data)
    return edit


def clean_error(rc: int, err: str, *needles: str) -> str:
    """The one error line, after checking it is the only one, the exit code is 2 and there is no traceback."""
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def warnings_of(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("warning:")]


def reference_csv(rows: int = 4, apps: tuple[str, ...] = ("alpha", "beta", "gamma")) -> str:
    """A small table in the reference format: 4 clocks per app, time ~ 1/f, power ~ f."""
    lines = [",sm_app_clock,application,power_usage,run_time"]
    i = 0
    for app in apps:
        for k in range(rows):
            f = 1380 - 200 * k
            lines.append(f"{i},{f},{app},{50 + f / 10:.2f},{1000 / f + 1:.4f}")
            i += 1
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- power_modeling: errors

GARBAGE = bytes(range(256)) * 4  # NUL and every other byte: a binary file
NOT_UTF8 = b"\xff\xfe\xfa not text " * 20

PM_ERRORS = [
    ("manifest-garbage", write("manifest.json", "{this is not json"), "manifest.json: not valid JSON"),
    ("manifest-list", write("manifest.json", "[1, 2, 3]"), "a JSON list"),
    ("manifest-binary", write("manifest.json", GARBAGE), "manifest.json: binary data"),
    ("manifest-empty", write("manifest.json", ""), "manifest.json: empty file"),
    ("runs-empty", write("runs.csv", ""), "runs.csv: empty file"),
    ("runs-whitespace", write("runs.csv", "\n\n  \n"), "runs.csv: empty file"),
    ("runs-binary", write("runs.csv", GARBAGE), "runs.csv: binary data"),
    ("runs-not-utf8", write("runs.csv", NOT_UTF8), "runs.csv: not UTF-8"),
    ("runs-torn-header", write("runs.csv", "run_id,sm_clock_target_mhz,sta"), "runs.csv: no complete line"),
    ("runs-other-layout", write("runs.csv", "a,b\n1,2\n"), "missing column(s) run_id"),
    ("runs-header-only", lambda d: (d / "runs.csv").write_text((d / "runs.csv").read_text().splitlines()[0] + "\n"),
     "no successful measured run"),
    ("runs-every-value-bad", set_cells({(i, "work_s"): "abc" for i in range(RUNS)}), "no successful measured run"),
    ("runs-all-zero-time", set_cells({(i, "work_s"): "0" for i in range(RUNS)}), "every run has missing"),
    ("dir-without-runs", lambda d: (d / "runs.csv").rename(d / "runs.old"), "no runs.csv in it"),
]


@pytest.mark.parametrize(("edit", "needle"), [c[1:] for c in PM_ERRORS], ids=[c[0] for c in PM_ERRORS])
def test_power_modeling_damaged_results_are_one_error(recorded, tmp_path, capsys, edit, needle):
    d = copy_of(recorded, tmp_path, edit)
    out = tmp_path / "out"
    rc = pm_main(["select", str(d), "--out", str(out)])
    clean_error(rc, capsys.readouterr().err, needle, str(d))
    assert not out.exists()


FILE_ERRORS = [
    ("csv-empty", "x.csv", b"", "x.csv: empty file"),
    ("csv-binary", "x.csv", GARBAGE, "x.csv: binary data"),
    ("csv-not-utf8", "x.csv", NOT_UTF8, "x.csv: not UTF-8"),
    ("csv-other-layout", "x.csv", b"a,b\n1,2\n", "not a results directory nor a reference CSV"),
    ("txt-file", "x.txt", b"hello\n", "not a results directory nor a reference CSV"),
    ("csv-all-rows-bad", "x.csv", b",sm_app_clock,application,power_usage,run_time\n0,abc,a,x,y\n", "no usable row"),
]


@pytest.mark.parametrize(("name", "data", "needle"), [c[1:] for c in FILE_ERRORS], ids=[c[0] for c in FILE_ERRORS])
def test_power_modeling_damaged_reference_files_are_one_error(tmp_path, capsys, name, data, needle):
    f = tmp_path / name
    f.write_bytes(data)
    rc = pm_main(["report", str(f)])
    clean_error(rc, capsys.readouterr().err, needle)
    assert not (tmp_path / "report").exists()


BAD_OPTIONS = [
    ("clocks-nan", ["predict", "--clocks", "nan"], "--clocks"),
    ("clocks-inf", ["predict", "--clocks", "1200,inf"], "--clocks"),
    ("clocks-negative", ["predict", "--clocks", "-100"], "--clocks"),
    ("clocks-zero", ["predict", "--clocks", "0"], "--clocks"),
    ("clocks-empty", ["predict", "--clocks", ""], "--clocks"),
    ("clocks-commas", ["predict", "--clocks", ", ,"], "--clocks"),
    ("clocks-word", ["predict", "--clocks", "1200,fast"], "--clocks"),
    ("slowdown-nan", ["select", "--max-slowdown", "nan"], "--max-slowdown"),
    ("slowdown-inf", ["select", "--max-slowdown", "inf"], "--max-slowdown"),
    ("slowdown-report", ["report", "--max-slowdown", "-inf"], "--max-slowdown"),
]


@pytest.mark.parametrize("args,needle", [c[1:] for c in BAD_OPTIONS], ids=[c[0] for c in BAD_OPTIONS])
def test_power_modeling_bad_option_values(recorded, tmp_path, capsys, args, needle):
    d = copy_of(recorded, tmp_path)
    out = tmp_path / "out"
    rc = pm_main([*args, str(d), "--out", str(out)])
    clean_error(rc, capsys.readouterr().err, needle)
    assert not out.exists() and not (d / "report").exists()


# --------------------------------------------------------------------------- power_modeling: skipped rows

PM_SKIPS = [
    # (id, edit, runs kept, what the warning says; None: nothing to say)
    ("torn-last-line", append("runs.csv", "f0990_r02,990,2,0,ok,0,2026-"), RUNS, None),
    ("repeated-header", repeated_header, RUNS, "skipped 1 repeated header line(s)"),
    ("non-numeric-time", set_cells({(1, "work_s"): "abc"}), RUNS - 1, "skipped 1 row(s) with non-numeric values"),
    ("non-numeric-clock", set_cells({(0, "sm_clock_target_mhz"): "fast", (3, "work_energy_j"): "12J"}), RUNS - 2,
     "skipped 2 row(s) with non-numeric values"),
    ("short-row", append("runs.csv", "f0990_r09,990,9,0,ok\n"), RUNS, "skipped 1 row(s) with a number of fields"),
    ("negative-time", set_cells({(2, "work_s"): "-1.5"}), RUNS - 1, "skipped 1 run(s) with missing, infinite"),
    ("infinite-energy", set_cells({(2, "work_energy_j"): "inf"}), RUNS - 1, "skipped 1 run(s) with missing, infinite"),
    ("samples-empty", write("samples/f1395_r01.csv", ""), RUNS, "skipped 1 unreadable samples file(s) (f1395_r01.csv)"),
    ("samples-binary", write("samples/f1395_r01.csv", GARBAGE), RUNS, "skipped 1 unreadable samples file(s)"),
    ("samples-text", write("samples/f0990_r00.csv", "lorem ipsum\ndolor\n"), RUNS,
     "skipped 1 unreadable samples file(s)"),
    ("samples-all", every_samples_file(b"\x00garbage"), RUNS, f"skipped {RUNS} unreadable samples file(s)"),
    ("phase-energy-garbage", set_cells({(0, "phase_energy_json"): "{oops"}), RUNS, "unreadable phase_energy_json"),
    ("manifest-slurm-not-a-dict", lambda d: (d / "manifest.json").write_text(json.dumps(
        {**json.loads((d / "manifest.json").read_text()), "slurm": "job 7"})), RUNS, None),
]


@pytest.mark.parametrize(("edit", "kept", "note"), [c[1:] for c in PM_SKIPS], ids=[c[0] for c in PM_SKIPS])
def test_power_modeling_skips_damaged_rows_and_says_how_many(recorded, tmp_path, capsys, edit, kept, note):
    d = copy_of(recorded, tmp_path, edit)
    rc = pm_main(["merge", str(d), "--out", str(tmp_path / "m")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "error:" not in cap.err and "Traceback" not in cap.err
    assert len(pd.read_csv(tmp_path / "m" / "runs_merged.csv")) == kept
    found = warnings_of(cap.err)
    if note is None:
        assert found == []
    else:
        assert len(found) == 1 and note in found[0], cap.err
    assert pm_main(["select", str(d)]) == 0  # the analysis runs on what is left
    assert "Traceback" not in capsys.readouterr().err


def test_reference_csv_truncated_last_row_and_bad_value_are_skipped(tmp_path, capsys):
    text = reference_csv()
    lines = text.splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",slow"  # a run time that is not a number
    f = tmp_path / "ref.csv"
    f.write_text("\n".join(lines) + "\n" + "12,1380,delta,19")  # a last row cut mid-way, no newline
    rc = pm_main(["merge", str(f), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 0, err
    notes = warnings_of(err)
    assert any("skipped 1 row(s) with a number of fields" in n for n in notes), err
    assert any("skipped 1 row(s) with non-numeric values" in n and "run_time='slow'" in n for n in notes), err
    assert len(pd.read_csv(tmp_path / "m" / "runs_merged.csv")) == 12 - 1


def test_report_survives_damaged_data_and_says_what_it_skipped(recorded, tmp_path, capsys):
    d = copy_of(recorded, tmp_path, both(repeated_header, write("samples/f1785_r01.csv", GARBAGE),
                                         set_cells({(1, "phase_energy_json"): "[1,"}), set_cells({(4, "work_s"): "?"})))
    rc = pm_main(["report", str(d)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert (d / "report" / "report.html").exists()
    notes = " | ".join(warnings_of(err))
    for said in ("repeated header", "non-numeric values", "unreadable samples file", "unreadable phase_energy_json"):
        assert said in notes, err


def test_report_survives_a_garbage_samples_file_of_the_traced_run(recorded, tmp_path, capsys):
    d = copy_of(recorded, tmp_path, every_samples_file(GARBAGE))
    rc = pm_main(["report", str(d)])
    assert rc == 0 and (d / "report" / "report.html").exists()


# --------------------------------------------------------------------------- replay sources

def replay_args(source: Path, out: Path, app: str | None = None) -> list[str]:
    return ["--profiling-tool", "replay", "--replay-source", str(source), *(["--replay-app", app] if app else []),
            "--profiling-mode", "dvfs", "--num-runs", "1", "--sleep-interval", "0", "--idle-seconds", "0",
            "--output-dir", str(out)]


REPLAY_FILES = [
    ("empty", b"", "empty file"),
    ("binary", GARBAGE, "binary data"),
    ("not-utf8", NOT_UTF8, "not UTF-8"),
    ("truncated-header", b",sm_app_clock,applic", "not a reference CSV"),
    ("other-layout", b"time,watts\n1,2\n", "not a reference CSV: no column(s)"),
    ("every-row-bad", b",sm_app_clock,application,power_usage,run_time\n0,x,a,y,z\n", "no usable row"),
]


@pytest.mark.parametrize(("data", "needle"), [c[1:] for c in REPLAY_FILES], ids=[c[0] for c in REPLAY_FILES])
def test_replay_damaged_source_file_is_one_error(tmp_path, capsys, data, needle):
    src = tmp_path / "source.csv"
    src.write_bytes(data)
    out = tmp_path / "out"
    rc = launch_main(replay_args(src, out, "alpha"))
    clean_error(rc, capsys.readouterr().err, "--replay-source", str(src), needle)
    assert not out.exists()


REPLAY_DIRS = [
    ("no-runs-csv", lambda d: (d / "runs.csv").unlink(), "a directory without runs.csv"),
    ("runs-empty", write("runs.csv", ""), "runs.csv: empty file"),
    ("runs-binary", write("runs.csv", GARBAGE), "runs.csv: binary data"),
    ("runs-other-layout", write("runs.csv", "a,b\n1,2\n"), "no column(s) run_id"),
    ("samples-all-garbage", every_samples_file(GARBAGE), "no successful locked-clock run with a readable samples"),
    ("no-samples-dir", lambda d: shutil.rmtree(d / "samples"), "no successful locked-clock run"),
]


@pytest.mark.parametrize(("edit", "needle"), [c[1:] for c in REPLAY_DIRS], ids=[c[0] for c in REPLAY_DIRS])
def test_replay_damaged_results_directory_is_one_error(recorded, tmp_path, capsys, edit, needle):
    d = copy_of(recorded, tmp_path, edit)
    out = tmp_path / "out"
    rc = launch_main(replay_args(d, out))
    clean_error(rc, capsys.readouterr().err, "--replay-source", needle)
    assert not out.exists()


def test_replay_missing_source_names_the_option(tmp_path, capsys):
    rc = launch_main(replay_args(tmp_path / "nothing", tmp_path / "out"))
    clean_error(rc, capsys.readouterr().err, "--replay-source", "no such file or directory")
    assert not (tmp_path / "out").exists()


def test_replaying_a_recorded_results_directory_end_to_end(recorded, tmp_path, capsys):
    """It used to crash writing the replayed run's metrics: the app config held numpy integers."""
    out = tmp_path / "replayed"
    rc = launch_main(replay_args(recorded, out))
    err = capsys.readouterr().err
    assert rc == 0, err
    rows = pd.read_csv(out / "runs.csv")
    assert sorted(rows["sm_clock_target_mhz"]) == sorted(CLOCKS) and set(rows["mode"]) == {"replay"}
    assert set(rows["status"]) == {"ok"} and rows["work_energy_j"].gt(0).all()
    metrics = json.loads((out / "apps" / f"{rows['run_id'][0]}.json").read_text())
    assert metrics["config"]["height"] == 64 and type(metrics["config"]["steps"]) is int
    assert pm_main(["select", str(out)]) == 0  # what replay wrote is a results directory like any other


def test_replay_skips_damaged_runs_of_a_recorded_directory_with_a_count(recorded, tmp_path, capsys):
    d = copy_of(recorded, tmp_path, both(repeated_header, write("samples/f1395_r00.csv", GARBAGE)))
    out = tmp_path / "replayed"
    rc = launch_main([*replay_args(d, out), "--num-runs", "2"])
    err = capsys.readouterr().err
    assert rc == 0, err
    notes = warnings_of(err)
    assert any("skipped 1 repeated header line(s)" in n for n in notes), err
    assert any("skipped 1 run(s) whose samples file is missing or unreadable (f1395_r00.csv)" in n for n in notes)
    assert len(pd.read_csv(out / "runs.csv")) == RUNS  # the other run at 1395 MHz is served twice


def test_replay_reference_table_with_a_truncated_last_row(tmp_path, capsys):
    src = tmp_path / "ref.csv"
    src.write_text(reference_csv() + "12,1380,alpha,1")
    rc = launch_main(replay_args(src, tmp_path / "out", "alpha"))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert any("skipped 1 row(s) with a number of fields" in n for n in warnings_of(err)), err
    assert len(pd.read_csv(tmp_path / "out" / "runs.csv")) == 4


# --------------------------------------------------------------------------- SLURM: site settings

SITE_OK = "partition: gpu\naccount: lab\ntime: '01:00:00'\ngpus: 1\n"
BAD_SITES = [
    ("partition-semicolon", "partition: 'gpu;rm -rf ~'\n", "partition 'gpu;rm -rf ~'"),
    ("partition-newline", 'partition: "gpu\\nrm -rf ~"\n', "partition 'gpu\\nrm -rf ~'"),
    ("partition-list", "partition: [gpu]\n", "partition"),
    ("account-subshell", "account: '$(whoami)'\n", "account '$(whoami)'"),
    ("account-backtick", "account: '`id`'\n", "account"),
    ("qos-space", "qos: 'normal high'\n", "qos"),
    ("modules-semicolon", "modules: ['cuda/12.4; rm -rf /']\n", "modules"),
    ("modules-subshell", "modules: ['$(touch pwned)']\n", "modules"),
    ("modules-string-backtick", "modules: 'cuda `id`'\n", "modules '`id`'"),
    ("modules-glob", "modules: ['*']\n", "modules '*'"),
    ("modules-mapping", "modules: {cuda: 12}\n", "modules"),
    ("results-subshell", "results_dir: '/scratch/$(whoami)'\n", "results_dir"),
    ("results-backtick", "results_dir: '/scratch/`id`'\n", "results_dir"),
    ("results-newline", 'results_dir: "/scratch\\nid"\n', "results_dir"),
    ("results-quote", "results_dir: '/scratch\"; id; \"'\n", "results_dir"),
    ("python-subshell", "python: '$(curl x)/python'\n", "python"),
    ("time-injection", "time: '02:00:00; id'\n", "time"),
    ("time-words", "time: two hours\n", "time"),
    ("mem-newline", 'mem: "64G\\nid"\n', "mem"),
    ("gpus-negative", "gpus: -1\n", "gpus -1"),
    ("gpus-word", "gpus: two\n", "gpus 'two'"),
    ("cpus-zero", "cpus_per_task: 0\n", "cpus_per_task 0"),
    ("signal-zero", "signal_seconds: 0\n", "signal_seconds 0"),
    ("signal-huge", "signal_seconds: 100000\n", "signal_seconds"),
    ("requeue-word", "requeue: maybe\n", "requeue"),
    ("gpu-option", "gpu_option: both\n", "gpu_option"),
    ("constraint-semicolon", "constraint: 'h100;id'\n", "constraint"),
    ("constraint-per-gpu-bad", "constraint: {H100: 'h100 $(id)'}\n", "constraint.H100"),
    ("constraint-unknown-gpu", "constraint: {X100: x}\n", "constraint 'X100'"),
    ("extra-newline", 'extra_sbatch: ["--exclusive\\nid"]\n', "extra_sbatch"),
    ("extra-not-option", "extra_sbatch: ['exclusive']\n", "extra_sbatch"),
    ("extra-string", "extra_sbatch: --exclusive\n", "extra_sbatch"),
    ("yaml-garbage", "partition: [unclosed\n", "not valid YAML"),
    ("yaml-list", "- partition\n- gpu\n", "must be a mapping"),
    ("unknown-key", "partitoin: gpu\n", "unknown setting(s) partitoin"),
]


@pytest.mark.parametrize(("text", "needle"), [c[1:] for c in BAD_SITES], ids=[c[0] for c in BAD_SITES])
def test_bad_site_value_is_refused_naming_the_key(tmp_path, capsys, text, needle):
    site = tmp_path / "site.yaml"
    site.write_text(text)
    out = tmp_path / "scripts"
    out.mkdir()
    rc = slurm_main(["render", "--site", str(site), "--out-dir", str(out)])
    clean_error(rc, capsys.readouterr().err, needle)
    assert list(out.iterdir()) == []


def test_binary_site_file_is_one_error(tmp_path, capsys):
    site = tmp_path / "site.yaml"
    site.write_bytes(NOT_UTF8)
    rc = slurm_main(["render", "--site", str(site), "--out-dir", str(tmp_path)])
    clean_error(rc, capsys.readouterr().err, "SD_ENERGY_SITE", "not valid YAML")


def test_render_refuses_an_unchecked_site_too():
    """Code that builds the settings itself cannot render a value the site file could not hold."""
    with pytest.raises(Exception, match="partition"):
        render("H100", {"partition": "gpu\n/bin/rm -rf ~"})


def test_paths_with_spaces_render_to_a_script_that_keeps_them_literal(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(SITE_OK + "results_dir: '/scratch/my results;x'\npython: /opt/my env/bin/python\n"
                    "modules: [cuda/12.4, python/3.11]\n")
    text = render("H100", load_site(site))
    exports = "\n".join(ln for ln in text.splitlines() if ln.startswith("export "))
    env = {"PATH": os.environ["PATH"]}
    p = subprocess.run(["bash", "-c", exports + '\nprintf "%s|%s|%s" "$SD_ENERGY_RESULTS" "$SD_ENERGY_PYTHON" '
                        '"$SD_ENERGY_MODULES"'], capture_output=True, text=True, env=env, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "/scratch/my results;x|/opt/my env/bin/python|cuda/12.4 python/3.11"


# --------------------------------------------------------------------------- SLURM: experiment values

BAD_EXPERIMENTS = [
    ("num-runs-word", "num-runs: abc\n", "--num-runs: 'abc' is not a valid integer"),
    ("num-runs-negative", "num_runs: -1\n", "--num-runs -1: must be at least 1"),
    ("num-runs-fraction", "num-runs: 2.5\n", "--num-runs 2.5: must be a whole number"),
    ("num-runs-bool", "num-runs: true\n", "--num-runs True: must be a whole number"),
    ("num-runs-empty", "num-runs:\n", "--num-runs: has no value"),
    ("mode-unknown", "profiling-mode: fast\n", "--profiling-mode: 'fast' is not one of"),
    ("tool-unknown", "profiling-tool: magic\n", "--profiling-tool: 'magic' is not one of"),
    ("sleep-nan", "sleep-interval: .nan\n", "--sleep-interval"),
    ("timeout-negative", "timeout: -5\n", "--timeout -5.0: must be positive"),
    ("sampling-too-fast", "sampling-interval: 1\n", "--sampling-interval"),
    ("custom-frequencies-word", "profiling-mode: custom\ncustom-frequencies: '1410,fast'\n", "--custom-frequencies"),
    ("clock-slice-bad", "clock-slice: 3/2\n", "--clock-slice 3/2"),
    ("app-params-list", "app-params: ['--steps', '5']\n", "--app-params"),
    ("flag-word", "in-process: maybe\n", "--in-process"),
    ("app-missing", "app-executable: no/such/app.py\n", "--app-executable"),
    ("unknown-key", "num-runz: 3\n", "unknown key 'num-runz' (did you mean 'num-runs'?)"),
    ("not-a-mapping", "- num-runs\n", "must be a mapping"),
    ("yaml-garbage", "num-runs: [1\n", "not valid YAML"),
]


@pytest.fixture
def submit_scripts():
    """What submit writes before calling sbatch: a failed check must not write it."""
    where = REPO / "results" / "slurm"
    before = {p: p.stat().st_mtime_ns for p in where.glob("*")} if where.exists() else None
    yield
    after = {p: p.stat().st_mtime_ns for p in where.glob("*")} if where.exists() else None
    assert after == before


@pytest.mark.parametrize(("text", "needle"), [c[1:] for c in BAD_EXPERIMENTS], ids=[c[0] for c in BAD_EXPERIMENTS])
def test_bad_experiment_value_fails_at_submission(tmp_path, capsys, submit_scripts, text, needle):
    exp = tmp_path / "exp.yaml"
    exp.write_text(text)
    rc = slurm_main(["submit", "H100", str(exp)])
    clean_error(rc, capsys.readouterr().err, f"EXPERIMENT {exp}", needle)


def test_binary_experiment_file_fails_at_submission(tmp_path, capsys, submit_scripts):
    exp = tmp_path / "exp.yaml"
    exp.write_bytes(NOT_UTF8)
    rc = slurm_main(["submit", "H100", str(exp)])
    clean_error(rc, capsys.readouterr().err, "not valid YAML")


def test_guided_experiment_cannot_be_an_array(tmp_path, capsys, submit_scripts):
    exp = tmp_path / "exp.yaml"
    exp.write_text("profiling-mode: guided\n")
    rc = slurm_main(["submit", "H100", str(exp), "--array-tasks", "3"])
    clean_error(rc, capsys.readouterr().err, "--clock-slice", "not with --profiling-mode guided")


@pytest.mark.parametrize("name", ["demo", "sd15_dvfs", "sdxl_dvfs", "tests/data/experiments/fast.yaml"])
def test_shipped_experiments_pass_the_value_checks(name):
    from profiling.slurm import check_experiment

    assert check_experiment(str(REPO / name) if "/" in name else name, "H100").is_file()


# --------------------------------------------------------------------------- SLURM: job.sh

def run_job_sh(tmp_path: Path, modules: str) -> subprocess.CompletedProcess:
    """job.sh up to its module loads, with ``module`` a function that records its arguments."""
    log = tmp_path / "module.log"
    script = f'module() {{ printf "%s\\n" "$*" >> {log}; }}; export -f module; exec bash "$0" H100 no-such-exp'
    env = {"PATH": os.environ["PATH"], "SD_ENERGY_ROOT": str(REPO), "SD_ENERGY_MODULES": modules}
    return subprocess.run(["bash", "-c", script, str(REPO / "slurm" / "job.sh")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=30)


@pytest.mark.parametrize("modules", ["cuda/12.4 $(touch pwned)", "cuda `touch pwned`", "a;touch pwned", "*"])
def test_job_sh_refuses_module_names_that_are_shell(tmp_path, modules):
    (tmp_path / "decoy").write_text("")  # what an unquoted * would expand to
    p = run_job_sh(tmp_path, modules)
    clean_error(p.returncode, p.stderr, "SD_ENERGY_MODULES")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "module.log").exists()


def test_job_sh_loads_each_module_literally(tmp_path):
    p = run_job_sh(tmp_path, "cuda/12.4   python/3.11")
    assert (tmp_path / "module.log").read_text() == "load cuda/12.4\nload python/3.11\n"
    clean_error(p.returncode, p.stderr, "EXPERIMENT no-such-exp")  # then stops at the missing experiment
