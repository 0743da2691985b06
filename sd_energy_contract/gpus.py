"""The GPU specs file, ``configs/gpus.yaml``: one entry per SKU (clock list, TDP, peaks, the simulated
GPU's model), the families that group them, and each architecture's sensor behaviour.

Two names for a GPU, on purpose. The *family* (V100, A100, H100, H200) is what rows' ``gpu_type``
holds and what ``--gpu-type`` has always accepted: the reference V100 data and the shipped models
are keyed by it. The *SKU* (H100-SXM5, H100-NVL, ...) is what the specs differ by: an H100 SXM5
runs to 1980 MHz at 700 W, an H100 NVL to 1785 MHz at 400 W. A family name means its default SKU
(``families:`` in the file); the NVML device name picks the SKU of a real GPU (``nvml_names``).

Read once per process (it is small and never changes while a sweep runs). PyYAML is this
layer's only import beyond the standard library, and only when the file is first read.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

GPUS_YAML = Path(__file__).resolve().parent.parent / "configs" / "gpus.yaml"


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text())


# Top-level keys of the specs file that are not GPU types.
RESERVED_KEYS = frozenset({"sensors", "families"})


def _read(path: str | Path | None) -> dict:
    path = Path(path or GPUS_YAML)
    return _load(str(path), os.stat(path).st_mtime)


def _skus(data: dict) -> dict[str, dict]:
    return {k: v for k, v in data.items() if k not in RESERVED_KEYS}


def load_gpu_specs(path: str | Path | None = None) -> dict[str, dict]:
    """GPU type -> its spec: every SKU, and every family name as its default SKU's spec. Each spec has
    ``sku`` and ``family``. A copy, so a caller may change it."""
    data = _read(path)
    specs = {k: {**v, "sku": k} for k, v in _skus(data).items()}
    for family, sku in (data.get("families") or {}).items():
        specs[family] = dict(specs[sku])
    return specs


def gpu_skus(path: str | Path | None = None) -> dict[str, dict]:
    """Only the SKU entries (no family aliases): SKU -> spec."""
    return {k: v for k, v in load_gpu_specs(path).items() if v["sku"] == k}


def families(path: str | Path | None = None) -> dict[str, str]:
    """Family name -> its default SKU."""
    return dict(_read(path).get("families") or {})


def sku_of(gpu_type: str | None, path: str | Path | None = None) -> str | None:
    """The SKU a GPU type names: itself for a SKU, the default SKU for a family; None when unknown."""
    spec = load_gpu_specs(path).get(gpu_type) if gpu_type else None
    return spec["sku"] if spec else None


def family_of(gpu_type: str | None, path: str | Path | None = None) -> str | None:
    """The family of a SKU or family name; None when unknown."""
    spec = load_gpu_specs(path).get(gpu_type) if gpu_type else None
    return spec.get("family") if spec else None


def sensor_model(gpu_type: str, path: str | Path | None = None) -> dict:
    """How this GPU type's power and energy sensors behave (the ``sensors:`` entry its ``arch`` names).

    A family name resolves to its default SKU. An unknown type or one without ``arch`` gets an empty
    dict: callers treat missing settings as "no artefact" (instantaneous power, continuous counter,
    everything sampled).
    """
    data = _read(path)
    arch = (load_gpu_specs(path).get(gpu_type) or {}).get("arch")
    return dict((data.get("sensors") or {}).get(arch) or {})


def gpu_tdp_w(gpu_type: str | None) -> float | None:
    """The TDP (W) of a GPU type (SKU, or family: its default SKU's), or None when the type or its TDP is unknown."""
    spec = load_gpu_specs().get(gpu_type) if gpu_type else None
    tdp = (spec or {}).get("tdp_w")
    return float(tdp) if tdp else None


def detect_gpu_sku(device_name: str) -> str | None:
    """'NVIDIA H100 80GB HBM3' -> 'H100-SXM5': the SKU whose ``nvml_names`` pattern is in the name.

    None when no SKU matches, or when more than one does (a name the file cannot tell apart must
    not silently pick the wrong TDP and clock range).
    """
    hits = [sku for sku, spec in gpu_skus().items()
            if spec.get("nvml_names") and re.search(spec["nvml_names"], device_name, re.IGNORECASE)]
    return hits[0] if len(hits) == 1 else None


def detect_gpu_type(device_name: str) -> str | None:
    """'NVIDIA H100 80GB HBM3' -> 'H100': the family of the detected SKU, else the family name found in
    the device name (a SKU the file does not list, e.g. 'Tesla V100S-PCIE-32GB' -> 'V100')."""
    sku = detect_gpu_sku(device_name)
    if sku is not None:
        return family_of(sku)
    upper = device_name.upper()
    for family in sorted(families(), key=len, reverse=True):
        if family.upper() in upper:
            return family
    return None


@dataclass(frozen=True)
class GpuIdentity:
    """What the rows and the manifest say the GPU is: ``family`` (rows' gpu_type), ``sku`` (gpu_sku,
    None when the device name matches no SKU) and ``note``, one sentence on how the SKU was chosen."""

    family: str | None
    sku: str | None
    note: str


def identify_gpu(device_name: str, given: str | None = None, *, measured: bool = True,
                 detected: str | None = None) -> GpuIdentity:
    """The GPU's family and SKU from its device name and ``--gpu-type``.

    ``measured``: a real GPU, whose name is the truth; a given type must agree with it (``GPU_TYPE=A100
    sbatch ...`` landing on an H100 node must not write H100 numbers labelled A100), else an
    InputError. Otherwise (simulated, replayed) the given type, or ``detected`` (the backend's own
    type), decides. A family name means its default SKU, and the note says so.
    """
    specs = load_gpu_specs()
    if given is not None and given not in specs:
        raise InputError("--gpu-type", given, f"unknown GPU type; known: {', '.join(specs)}")
    name_sku = detect_gpu_sku(device_name)
    name_family = family_of(name_sku) if name_sku else detect_gpu_type(device_name)
    if measured and given is not None and name_family is not None:
        given_sku = specs[given]["sku"]
        wrong_family = specs[given]["family"] != name_family
        wrong_sku = given != specs[given]["family"] and name_sku is not None and given_sku != name_sku
        if wrong_family or wrong_sku:
            raise InputError("--gpu-type", given, f"but the GPU is a {device_name} ({name_sku or name_family}); "
                             "drop --gpu-type or run where that GPU is")
    if measured:
        if name_sku is not None:
            return GpuIdentity(name_family, name_sku, f"{name_sku}: detected from the device name {device_name!r}")
        if given is not None and given == specs[given]["sku"]:
            return GpuIdentity(specs[given]["family"], given, f"{given}: given (--gpu-type); the device name "
                               f"{device_name!r} matches no SKU in configs/gpus.yaml")
        family = specs[given]["family"] if given else name_family
        return GpuIdentity(family, None, f"the device name {device_name!r} matches no SKU in configs/gpus.yaml"
                           + (f" (family {family}); give --gpu-type SKU to name it" if family else ""))
    key = given or detected or name_sku
    if key is None or key not in specs:
        return GpuIdentity(name_family, None, f"the device name {device_name!r} matches no SKU in configs/gpus.yaml")
    sku, family = specs[key]["sku"], specs[key]["family"]
    if key == sku:
        return GpuIdentity(family, sku, f"{sku}: " + ("given (--gpu-type)" if key == given else "the backend's type"))
    others = [s for s, v in gpu_skus().items() if v["family"] == family and s != sku]
    return GpuIdentity(family, sku, f"{key} means the {sku} here (the family's default SKU: configs/gpus.yaml "
                       f"families)" + (f"; --gpu-type {' or '.join(others)} for another" if others else ""))
