"""``import pynvml`` in a subprocess: the fake NVML of tests/fakes.py (``FAKE_NVML_COUNT`` GPUs, default 2).

Put this directory first on PYTHONPATH to run the launcher, and the processes it spawns, against it.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for fakes.py
from fakes import make_fake_pynvml  # noqa: E402

globals().update({k: v for k, v in vars(make_fake_pynvml(count=int(os.environ.get("FAKE_NVML_COUNT", "2")))).items()
                  if not k.startswith("__")})
