#!/usr/bin/env python3
"""A stand-in workload for launcher tests: behaves as told, writes events and metrics like the real app."""

import json
import os
import sys
import time

args = sys.argv[1:]
mode = args[0] if args else "ok"
seconds = float(args[1]) if len(args) > 1 and mode not in ("argv", "helper") else 0.3


def event(kind, phase, **kw):
    path = os.environ.get("SD_ENERGY_EVENTS_FILE")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"event": kind, "phase": phase, "mono_s": time.monotonic(), **kw}) + "\n")


if mode == "argv":
    with open(args[1], "w") as fh:
        json.dump(args[2:], fh)
    sys.exit(0)
if mode == "crash":
    os.kill(os.getpid(), 9)
if mode == "exit3":
    print("bad things", file=sys.stderr)
    sys.exit(3)
if mode == "helper":  # starts a helper in its own session (it leaves the app's process group), then hangs
    import subprocess

    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    with open(args[1], "w") as fh:
        fh.write(str(helper.pid))
    time.sleep(60)
if mode == "oom":
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr)
    sys.exit(1)
event("start", "load")
time.sleep(0.05)
event("end", "load")
dilate = None
if os.environ.get("SD_ENERGY_SIMULATED_STATE"):  # behave like the real app on the simulated GPU
    from profiling.backends.simulated import StepDilation

    dilate = StepDilation.from_env()
event("start", "batch", batch=0)
for i in range(3):
    event("start", "denoise_step", step=i, batch=0)
    time.sleep(seconds / 3)
    if dilate:
        dilate(seconds / 3)
    event("end", "denoise_step", step=i, batch=0)
event("end", "batch", batch=0)
if os.environ.get("SD_ENERGY_METRICS_FILE"):
    with open(os.environ["SD_ENERGY_METRICS_FILE"], "w") as fh:
        json.dump({"images": 2, "config": {"model_variant": "fake", "steps": 3, "height": 64, "width": 64},
                   "env": {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}}, fh)
