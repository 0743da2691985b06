"""``import pynvml`` in a subprocess: the fake NVML of tests/fakes.py, set up from the environment.

Put this directory first on PYTHONPATH to run the launcher, and the processes it spawns, against it.

* ``FAKE_NVML_COUNT``: GPUs on the node (default 2), or ``FAKE_NVML_NODE``: the node as a JSON list of
  ``tests.fakes.FakeGpu`` fields (``[{"uuid": "GPU-a", "pci_bus_id": "...", "minor": 3}, ...]``);
* ``FAKE_NVML_VISIBLE``: the node positions the job's cgroup shows (``2,3``; default all);
* ``FAKE_NVML_SENSORS=1``: real-sensor artefacts (averaged power on Hopper, stepped counter, ...);
* ``FAKE_NVML_USER=nonroot`` and ``FAKE_NVML_ACP=0`` (the admin ran ``nvidia-smi -acp 0``);
* ``FAKE_NVML_LOG``: a file each NVML call is appended to as a JSON line (UUID, call, args).
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for fakes.py
sys.path.insert(1, str(Path(__file__).resolve().parents[3]))  # the checkout, for the sensor model
from fakes import FakeGpu, make_fake_pynvml  # noqa: E402


def _from_env(environ) -> dict:
    """The ``make_fake_pynvml`` arguments the environment asks for."""
    kw: dict = {"count": int(environ.get("FAKE_NVML_COUNT", "2")), "sensors": environ.get("FAKE_NVML_SENSORS") == "1",
                "root": environ.get("FAKE_NVML_USER", "root") != "nonroot",
                "app_clocks_restricted": environ.get("FAKE_NVML_ACP", "1") != "0"}
    if environ.get("FAKE_NVML_NODE"):
        kw["node"] = [FakeGpu(**{k: tuple(v) if k == "mig_uuids" else v for k, v in g.items()})
                      for g in json.loads(environ["FAKE_NVML_NODE"])]
    if environ.get("FAKE_NVML_VISIBLE"):
        kw["visible"] = [int(i) for i in environ["FAKE_NVML_VISIBLE"].split(",")]
    if environ.get("FAKE_NVML_LOG"):
        kw["call_log"] = Path(environ["FAKE_NVML_LOG"])
    return kw


globals().update({k: v for k, v in vars(make_fake_pynvml(**_from_env(os.environ))).items() if not k.startswith("__")})
