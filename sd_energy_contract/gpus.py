"""The GPU specs file, ``configs/gpus.yaml``: clock lists, TDP, peaks and the simulated GPU's model.

Read once per process (it is small and never changes while a sweep runs). PyYAML is this
layer's only import beyond the standard library, and only when the file is first read.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

GPUS_YAML = Path(__file__).resolve().parent.parent / "configs" / "gpus.yaml"


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text())


# Top-level keys of the specs file that are not GPU types.
RESERVED_KEYS = frozenset({"sensors"})


def _read(path: str | Path | None) -> dict:
    path = Path(path or GPUS_YAML)
    return _load(str(path), os.stat(path).st_mtime)


def load_gpu_specs(path: str | Path | None = None) -> dict[str, dict]:
    """GPU type -> its spec. A copy, so a caller may change it."""
    return {k: dict(v) for k, v in _read(path).items() if k not in RESERVED_KEYS}


def sensor_model(gpu_type: str, path: str | Path | None = None) -> dict:
    """How this GPU type's power and energy sensors behave (the ``sensors:`` entry its ``arch`` names).

    An unknown type or one without ``arch`` gets an empty dict: callers treat missing settings as
    "no artefact" (instantaneous power, continuous counter, everything sampled).
    """
    data = _read(path)
    arch = (data.get(gpu_type) or {}).get("arch")
    return dict((data.get("sensors") or {}).get(arch) or {})


def gpu_tdp_w(gpu_type: str | None) -> float | None:
    """The TDP (W) of a GPU type, or None when the type or its TDP is unknown."""
    spec = load_gpu_specs().get(gpu_type) if gpu_type else None
    tdp = (spec or {}).get("tdp_w")
    return float(tdp) if tdp else None


def detect_gpu_type(device_name: str) -> str | None:
    """'NVIDIA H100 80GB HBM3' -> 'H100': the types in the specs file, longest name first."""
    upper = device_name.upper()
    for key in sorted(load_gpu_specs(), key=len, reverse=True):
        if key.upper() in upper:
            return key
    return None
