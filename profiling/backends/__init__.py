"""Choose a GPU backend by name, or probe: NVML, then nvidia-smi, then the simulated GPU."""

from __future__ import annotations

import os
import shutil
import sys

from sd_energy_contract import env
from sd_energy_contract.gpus import detect_gpu_type, load_gpu_specs

from ..errors import GpuError
from .base import GpuBackend, GpuSample

BACKENDS = ("auto", "nvml", "smi", "dcgm", "simulated", "replay")

SIMULATED_BANNER = ("*** No NVIDIA GPU found: using the SIMULATED {gpu} (configs/gpus.yaml). Clock lists are real; "
                    "power and time are a model. Numbers are synthetic; rows say backend=simulated. ***")


def open_backend(name: str, index: int = 0, gpu_type: str | None = None, replay_source: str | None = None,
                 replay_app: str | None = None, announce=lambda msg: print(msg, file=sys.stderr)) -> GpuBackend:
    if name not in BACKENDS:
        raise GpuError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if name == "nvml":
        from .nvml import NvmlGpu

        return NvmlGpu(index)
    if name == "smi":
        from .smi import SmiGpu

        return SmiGpu(index)
    if name == "dcgm":
        from .dcgm import DcgmGpu

        return DcgmGpu(index)
    if name == "simulated":
        from .simulated import SimulatedGpu

        gpu = gpu_type or "H100"
        announce(SIMULATED_BANNER.format(gpu=gpu))
        return SimulatedGpu(gpu, index)
    if name == "replay":
        from .replay import ReplayGpu

        if not replay_source:
            raise GpuError("--profiling-tool replay needs --replay-source (a reference CSV or a results directory)")
        return ReplayGpu(replay_source, replay_app, index)
    # auto
    if os.environ.get(env.FORCE_SIMULATED) != "1":
        for candidate in ("nvml", "smi"):
            if candidate == "smi" and not shutil.which("nvidia-smi"):
                continue
            try:
                return open_backend(candidate, index)
            except GpuError:
                continue
    return open_backend("simulated", index, gpu_type, announce=announce)


__all__ = ["BACKENDS", "GpuBackend", "GpuSample", "open_backend", "detect_gpu_type", "load_gpu_specs"]
