"""The harness against slow, failing and badly-behaved callables, and against the real local HTTP server."""

from __future__ import annotations

import csv
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from conftest import REPO
from PIL import Image

from app.cli import main
from app.harness import CallableTarget, HarnessConfig, HttpTarget, compare, run_harness


class Slow:
    """Sleeps 50 ms per call and remembers the most calls it had in flight at once."""

    def __init__(self):
        self.lock, self.inflight, self.most = threading.Lock(), 0, 0

    def __call__(self, prompt, width, height, num_images, num_inference_steps, guidance_scale):
        with self.lock:
            self.inflight += 1
            self.most = max(self.most, self.inflight)
        time.sleep(0.05)
        with self.lock:
            self.inflight -= 1
        return [Image.new("RGB", (width, height))] * num_images


def cfg(**kw):
    base = dict(prompts=["a", "b"], levels=[1, 2], iterations=4, warmup=1, width=32, height=32, steps=5)
    base.update(kw)
    return HarnessConfig(**base)


def test_slow_callable_counts_and_percentiles(tmp_path):
    slow = Slow()
    one, two = run_harness(CallableTarget(slow), cfg(levels=[2, 1]), tmp_path, log=lambda *_: None)[::-1]
    assert one["requests"] == 4 and two["requests"] == 8 and one["ok"] == 4 and two["ok"] == 8
    assert one["latency_p50_s"] >= 0.05 and one["latency_p99_s"] >= one["latency_p50_s"]
    assert slow.most == 2  # level 2 ran two calls at once (the level-1 pass afterwards cannot raise it)
    assert one["ips"] == pytest.approx(one["images"] / one["wall_s"]) and one["images"] == 4
    assert one["pps"] == pytest.approx(one["ips"] * 32 * 32) and one["sps"] == pytest.approx(one["ips"] * 5)
    rows = list(csv.DictReader(open(tmp_path / "requests.csv")))
    assert len(rows) == 12 and {r["prompt"] for r in rows} == {"a", "b"}
    for name in ("summary.csv", "raw.json", "throughput.png", "latency.png"):
        assert (tmp_path / name).stat().st_size > 0
    compare([tmp_path / "summary.csv", tmp_path / "summary.csv"], tmp_path / "comparison.csv")
    assert len(list(csv.DictReader(open(tmp_path / "comparison.csv")))) == 4


def test_failures_timeouts_and_bad_returns_are_counted_not_fatal():
    calls = {"n": 0}

    def flaky(prompt, width, height, num_images, steps, guidance):
        calls["n"] += 1
        k = calls["n"]
        if k % 4 == 0:
            raise RuntimeError("boom")
        if k % 4 == 1:
            return "not an image"
        if k % 4 == 2:
            time.sleep(1.0)
        return [Image.new("RGB", (8, 8))]

    (s,) = run_harness(CallableTarget(flaky), cfg(levels=[1], iterations=8, warmup=0, timeout_s=0.3),
                       log=lambda *_: None)
    assert s["requests"] == 8 and s["errors"] == 2 and s["bad_returns"] == 2 and s["timeouts"] == 2 and s["ok"] == 2


def test_generator_target_gives_time_to_first_image():
    def streaming(prompt, width, height, num_images, steps, guidance):
        for _ in range(3):
            time.sleep(0.04)
            yield Image.new("RGB", (8, 8))

    (s,) = run_harness(CallableTarget(streaming), cfg(levels=[1], iterations=3), log=lambda *_: None)
    # Two more 40 ms sleeps follow every first image, so the medians are at least 80 ms apart.
    assert s["images"] == 9 and s["latency_p50_s"] - s["ttfi_p50_s"] >= 0.08


def test_other_return_shapes():
    import numpy as np

    for ret in ({"images": [np.zeros((8, 8, 3))]}, b"\x89PNG....", [b"a", b"b"]):
        (s,) = run_harness(CallableTarget(lambda *a, r=ret: r), cfg(levels=[1], iterations=1, warmup=0), log=lambda *_: None)
        assert s["ok"] == 1 and s["images"] >= 1


@pytest.mark.parametrize("args, expect", [
    (["--concurrency", "0"], "--concurrency 0: levels must be integers between 1 and 256"),
    (["--concurrency", "x"], "--concurrency x: must be comma-separated integers"),
    (["--iterations", "0"], "--iterations 0: must be at least 1"),
    (["--url", "http://127.0.0.1:9/generate"], "--url http://127.0.0.1:9/generate: unreachable"),
])
def test_bad_input(capsys, args, expect):
    assert main(["--harness", "--height", "64", "--width", "64", "--steps", "2", *args]) == 2
    err = capsys.readouterr().err
    assert expect in err and err.count("\n") == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app.serve", "--weights", "tiny", "--device", "cpu", "--port",
                             str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("server did not start: " + proc.stdout.read()[-2000:])
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_http_target_against_the_real_server(server, tmp_path):
    target = HttpTarget(server + "/generate", timeout_s=60)
    assert target.probe() is None
    (s,) = run_harness(target, cfg(levels=[2], iterations=2, width=64, height=64, steps=2), tmp_path,
                       log=lambda *_: None)
    assert s["ok"] == 4 and s["images"] == 4 and s["latency_p50_s"] > 0
    (multi,) = run_harness(target, cfg(levels=[1], iterations=1, width=64, height=64, steps=2, num_images=2),
                           log=lambda *_: None)
    assert multi["images"] == 2  # several images come back as JSON base64


def test_app_cli_harness_against_the_server(server, tmp_path):
    rc = main(["--harness", "--url", server + "/generate", "--concurrency", "1,2", "--iterations", "1",
               "--height", "64", "--width", "64", "--steps", "2", "--output-dir", str(tmp_path), "-q"])
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "harness" / "summary.csv")))
    assert [r["level"] for r in rows] == ["1", "2"] and all(r["ok"] == r["requests"] for r in rows)


def test_script_runs_from_anywhere_and_harness_timeouts_are_counted_not_an_abort(tmp_path):
    """The entry script, as a user runs it (from another directory). A timed-out generation keeps running
    in torch: the harness waits for it rather than let the process exit under it (which aborted, exit 134)."""
    from conftest import run_py

    p = run_py(str(REPO / "app" / "StableDiffusionViaHF.py"), "--harness", "--weights", "tiny", "--device", "cpu", "--concurrency", "1",
               "--iterations", "1", "--harness-warmup", "0", "--request-timeout", "0.001", "--height", "32",
               "--width", "32", "--steps", "2", "--output-dir", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    (row,) = list(csv.DictReader(open(tmp_path / "harness" / "summary.csv")))
    assert row["requests"] == row["timeouts"] == "1" and row["ok"] == "0"
    assert "waiting for" in p.stdout


def test_server_rejects_bad_requests(server):
    import json

    for body, expect in ((b'{"width": 64}', "bad request"),
                         (b'{"prompt": "a", "width": 65, "height": 64, "num_inference_steps": 2}',
                          "--width 65: must be a positive multiple of 8")):
        req = urllib.request.Request(server + "/generate", data=body, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=10)
        assert exc.value.code == 400 and expect in json.loads(exc.value.read())["error"]


def test_warmup_requests_are_made_but_not_recorded():
    calls = []

    def counting(prompt, width, height, num_images, steps, guidance):
        calls.append(prompt)
        return [Image.new("RGB", (8, 8))]

    (s,) = run_harness(CallableTarget(counting), cfg(levels=[1], iterations=3, warmup=2), log=lambda *_: None)
    assert s["requests"] == 3 and len(calls) == 5


def test_cli_prompt_set_and_request_timeout(server, tmp_path):
    rc = main(["--harness", "--url", server + "/generate", "--prompt-set", "icons", "--concurrency", "1",
               "--iterations", "2", "--harness-warmup", "0", "--request-timeout", "0.001", "--height", "64",
               "--width", "64", "--steps", "2", "--output-dir", str(tmp_path), "-q"])
    assert rc == 0
    reqs = list(csv.DictReader(open(tmp_path / "harness" / "requests.csv")))
    assert [r["prompt"] for r in reqs] == ["bank transfer icon", "minimal fintech payment icon"]
    assert {r["status"] for r in reqs} == {"timeout"}
