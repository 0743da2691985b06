"""Throughput/latency harness for any image generator: a Python callable or an HTTP image service.

A target is called as ``f(prompt, width, height, num_images, num_inference_steps, guidance_scale)``
and may return PIL images or arrays, a dict with ``images``, encoded image bytes, or a generator
yielding images one by one (then time-to-first-image is the first yield). An HTTP target gets the
same fields as a JSON POST and answers image bytes or ``{"images": [base64, ...]}``.

For each concurrency level, ``iterations`` requests per worker run on a thread pool after the
warm-up requests; failures, timeouts and wrong return types are rows with a status, never fatal.

    from app.harness import run_harness, CallableTarget
    summary = run_harness(CallableTarget(my_fn), ["a cat"], levels=[1, 2, 4], iterations=5, out_dir="bench/")
"""

from __future__ import annotations

import base64
import csv
import io
import json
import resource
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .models import ICON_PROMPTS

PROMPT_SETS = {
    "default": ["a photograph of an astronaut riding a horse", "a watercolor painting of a lighthouse at dusk",
                "a bowl of ramen, studio lighting", "an isometric illustration of a data centre"],
    "icons": list(ICON_PROMPTS),
}


class BadReturn(TypeError):
    """The target returned something that is not images."""


def count_images(result, base64_strings: bool = False) -> tuple[int, int]:
    """(images, encoded bytes) in a target's return value; raises BadReturn for anything else.

    Strings count as (base64) images only in a JSON service's answer, never from a callable.
    """
    if isinstance(result, dict):
        if "images" not in result:
            raise BadReturn(f"dict without 'images' (keys: {sorted(result)[:5]})")
        result = result["images"]
    if isinstance(result, bytes | bytearray):
        return 1, len(result)
    if not isinstance(result, list | tuple):
        result = [result]
    n = size = 0
    for item in result:
        if isinstance(item, bytes | bytearray):
            size += len(item)
        elif isinstance(item, str) and base64_strings:
            size += len(item) * 3 // 4
        elif not (hasattr(item, "size") and (hasattr(item, "save") or hasattr(item, "shape"))):
            raise BadReturn(f"not an image: {type(item).__name__}")
        n += 1
    if n == 0:
        raise BadReturn("no images returned")
    return n, size


@dataclass
class Request:
    prompt: str
    width: int
    height: int
    num_images: int
    num_inference_steps: int
    guidance_scale: float


@dataclass
class Outcome:
    level: int
    index: int
    prompt: str
    width: int
    height: int
    num_images_requested: int
    steps: int
    start_s: float
    end_s: float = 0.0
    latency_s: float = 0.0
    ttfi_s: float | None = None
    status: str = "ok"
    images: int = 0
    bytes: int = 0
    error: str = ""


class CallableTarget:
    def __init__(self, fn: Callable, **extra):
        self.fn = fn
        self.extra = extra
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, req: Request, t0: float) -> tuple[int, int, float]:
        result = self.fn(req.prompt, req.width, req.height, req.num_images, req.num_inference_steps,
                         req.guidance_scale, **self.extra)
        if isinstance(result, Iterator):
            images = size = 0
            first = None
            for item in result:
                n, b = count_images([item])
                first = first if first is not None else time.perf_counter() - t0
                images, size = images + n, size + b
            if images == 0:
                raise BadReturn("generator yielded no images")
            return images, size, first
        n, b = count_images(result)
        return n, b, time.perf_counter() - t0


class HttpTarget:
    def __init__(self, url: str, timeout_s: float = 300.0):
        self.url = url
        self.timeout_s = timeout_s
        self.name = url

    def probe(self) -> str | None:
        """None when the service answers at all (any HTTP status), else why not."""
        try:
            urllib.request.urlopen(urllib.request.Request(self.url, method="GET"), timeout=10)
        except urllib.error.HTTPError:
            return None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return str(getattr(exc, "reason", exc))
        return None

    def __call__(self, req: Request, t0: float) -> tuple[int, int, float]:
        body = json.dumps(asdict(req)).encode()
        http_req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(http_req, timeout=self.timeout_s) as resp:
            data = resp.read()
            ctype = resp.headers.get("Content-Type", "")
        if ctype.startswith("image/"):
            return 1, len(data), time.perf_counter() - t0
        if "json" in ctype:
            n, _ = count_images(json.loads(data), base64_strings=True)
            return n, len(data), time.perf_counter() - t0
        raise BadReturn(f"unexpected content type {ctype!r}")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _peak_memory() -> tuple[float, float | None]:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        import torch

        gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    except ImportError:
        gpu = None
    return rss, gpu


@dataclass
class HarnessConfig:
    prompts: list[str]
    levels: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    iterations: int = 3
    warmup: int = 1
    timeout_s: float = 300.0
    width: int = 512
    height: int = 512
    num_images: int = 1
    steps: int = 25
    guidance_scale: float = 7.5


def check_config(cfg: HarnessConfig) -> None:
    from sd_energy_contract.errors import InputError

    bad = [c for c in cfg.levels if c < 1]
    if not cfg.levels or bad:
        raise InputError("--concurrency", ",".join(map(str, cfg.levels)), "levels must be integers >= 1")
    if cfg.iterations < 1:
        raise InputError("--iterations", cfg.iterations, "must be at least 1")
    if cfg.timeout_s <= 0:
        raise InputError("--request-timeout", cfg.timeout_s, "must be positive")
    if not cfg.prompts:
        raise InputError("--prompt", None, "no prompts to send")


def _in_thread(target, req: Request, t0: float) -> tuple[Future, threading.Thread]:
    """Run one call on its own daemon thread: a call that hangs past its timeout is abandoned and
    can never hold up the requests after it (Python cannot kill a thread)."""
    fut: Future = Future()

    def run():
        try:
            fut.set_result(target(req, t0))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            fut.set_exception(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return fut, thread


def _one(target, req: Request, level: int, index: int, timeout_s: float, origin: float,
         abandoned: list[threading.Thread]) -> Outcome:
    out = Outcome(level, index, req.prompt, req.width, req.height, req.num_images, req.num_inference_steps,
                  time.perf_counter() - origin)
    t0 = time.perf_counter()
    fut, thread = _in_thread(target, req, t0)
    try:
        out.images, out.bytes, out.ttfi_s = fut.result(timeout=timeout_s)
    except FutureTimeout:
        out.status, out.error = "timeout", f"no answer in {timeout_s} s"
        abandoned.append(thread)
    except BadReturn as exc:
        out.status, out.error = "bad_return", str(exc)
    except (TimeoutError, urllib.error.URLError) as exc:
        out.status, out.error = ("timeout" if "timed out" in str(exc) else "error"), str(exc)
    except Exception as exc:  # noqa: BLE001 - a failing target is a row, never the end of the benchmark
        out.status, out.error = "error", f"{type(exc).__name__}: {exc}"
    out.end_s = time.perf_counter() - origin
    out.latency_s = out.end_s - out.start_s
    return out


def _wait_for(abandoned: list[threading.Thread], timeout_s: float, log) -> None:
    """Let the calls abandoned at their timeout finish before going on.

    They still run (on the GPU, say): left alone they would slow the next level down, and a
    process that exits while one is inside native code (torch) aborts instead of reporting.
    The wait is bounded, so a call that never returns cannot hold the harness forever.
    """
    alive = [t for t in abandoned if t.is_alive()]
    if not alive:
        return
    log(f"waiting for {len(alive)} timed-out request(s) to finish before going on")
    deadline = time.monotonic() + max(60.0, 10 * timeout_s)
    for t in alive:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in alive):
        log(f"{sum(t.is_alive() for t in alive)} timed-out request(s) still running; going on without them")


def run_level(target, cfg: HarnessConfig, level: int, log=print) -> tuple[list[Outcome], dict]:
    reqs = [Request(cfg.prompts[i % len(cfg.prompts)], cfg.width, cfg.height, cfg.num_images, cfg.steps,
                    cfg.guidance_scale) for i in range(level * cfg.iterations)]
    abandoned: list[threading.Thread] = []
    with ThreadPoolExecutor(max_workers=level) as callers:
        origin = time.perf_counter()
        for i in range(cfg.warmup):
            _one(target, reqs[i % len(reqs)], level, -1 - i, cfg.timeout_s, origin, abandoned)
        origin = time.perf_counter()
        futures = [callers.submit(_one, target, r, level, i, cfg.timeout_s, origin, abandoned)
                   for i, r in enumerate(reqs)]
        outcomes = [f.result() for f in futures]
        wall = time.perf_counter() - origin
    _wait_for(abandoned, cfg.timeout_s, log)
    ok = [o for o in outcomes if o.status == "ok"]
    images = sum(o.images for o in ok)
    rss, gpu = _peak_memory()
    lat = [o.latency_s for o in ok]
    ttfi = [o.ttfi_s for o in ok if o.ttfi_s is not None]
    summary = {"level": level, "requests": len(outcomes), "ok": len(ok),
               "errors": sum(o.status == "error" for o in outcomes),
               "timeouts": sum(o.status == "timeout" for o in outcomes),
               "bad_returns": sum(o.status == "bad_return" for o in outcomes), "wall_s": wall, "images": images,
               "ips": images / wall, "pps": images * cfg.width * cfg.height / wall,
               "sps": images * cfg.steps / wall, "rps": len(ok) / wall,
               **{f"ttfi_p{q}_s": _percentile(ttfi, q / 100) for q in (50, 95, 99)},
               **{f"latency_p{q}_s": _percentile(lat, q / 100) for q in (50, 95, 99)},
               "latency_mean_s": statistics.fmean(lat) if lat else None,
               "peak_rss_mib": rss, "peak_gpu_mib": gpu}
    return outcomes, summary


def run_harness(target, cfg: HarnessConfig, out_dir: str | Path | None = None, log=print) -> list[dict]:
    check_config(cfg)
    details, summaries = [], []
    for level in cfg.levels:
        outcomes, summary = run_level(target, cfg, level, log)
        details += outcomes
        summaries.append(summary)
        log(f"concurrency {level:>3}: {summary['ok']}/{summary['requests']} ok, {summary['ips']:.3f} img/s, "
            f"latency p50 {_ms(summary['latency_p50_s'])} p99 {_ms(summary['latency_p99_s'])}, "
            f"TTFI p50 {_ms(summary['ttfi_p50_s'])}")
    if out_dir is not None:
        write_outputs(Path(out_dir), target, cfg, details, summaries)
    return summaries


def _ms(v: float | None) -> str:
    return f"{v * 1000:.1f} ms" if v is not None else "-"


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_outputs(out: Path, target, cfg: HarnessConfig, details: list[Outcome], summaries: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "requests.csv", [asdict(d) for d in details])
    _write_csv(out / "summary.csv", summaries)
    (out / "raw.json").write_text(json.dumps({"target": target.name, "config": asdict(cfg),
                                              "summary": summaries, "requests": [asdict(d) for d in details]},
                                             indent=2, default=str))
    plot(summaries, out)


def plot(summaries: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [s["level"] for s in summaries]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(levels, [s["ips"] for s in summaries], "o-")
    ax.set_xlabel("concurrency")
    ax.set_ylabel("images/s")
    ax.set_title("Throughput")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for q in (50, 95, 99):
        ax.plot(levels, [(s[f"latency_p{q}_s"] or float("nan")) * 1000 for s in summaries], "o-", label=f"p{q}")
    ax.set_xlabel("concurrency")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency percentiles")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    plt.close(fig)


def compare(summary_csvs: list[str | Path], out_csv: str | Path) -> list[dict]:
    """One table across several harness runs (one row per run and level)."""
    rows = []
    for path in summary_csvs:
        with open(path) as fh:
            for r in csv.DictReader(fh):
                rows.append({"run": str(Path(path).parent.name), **r})
    _write_csv(Path(out_csv), rows)
    return rows


def encode_png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def b64_png(image) -> str:
    return base64.b64encode(encode_png(image)).decode()
