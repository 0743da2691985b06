"""The report and the notebook: files, plots, the synthetic label, rendering in headless Chromium."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess

import pytest
from conftest import REPO, run_py


def test_report_files_and_synthetic_label(sim_results, tmp_path):
    out = tmp_path / "rep"
    p = run_py("-m", "power_modeling", "report", str(sim_results), "--out", str(out))
    assert p.returncode == 0, p.stderr
    for name in ("report.html", "report.md", "features.csv", "choices.csv", "vs_clock.png", "pareto.png",
                 "model_fit.png", "trace_0.png"):
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


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")
def test_report_renders_in_headless_chromium_without_broken_images(sim_results, tmp_path):
    out = tmp_path / "rep"
    assert run_py("-m", "power_modeling", "report", str(sim_results), "--out", str(out)).returncode == 0
    probe = out / "probe.html"
    check = ("<script>window.addEventListener('load',()=>{const b=[...document.images].filter(i=>!i.complete||"
             "i.naturalWidth===0).length;document.body.setAttribute('data-check',"
             "'images='+document.images.length+';broken='+b);});</script>")
    probe.write_text((out / "report.html").read_text().replace("</body>", check + "</body>"))
    p = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=5000", "--dump-dom",
                        probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'data-check="images=(\d+);broken=(\d+)"', p.stdout)
    assert m, p.stderr[-2000:]
    assert int(m.group(1)) >= 4 and int(m.group(2)) == 0


def test_notebook_runs(sim_results, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("RESULTS_DIR", str(sim_results))
    nb = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "EDP-optimal clock" in text and "SYNTHETIC DATA" in text
