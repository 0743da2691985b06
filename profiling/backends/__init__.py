"""Choose a GPU backend by name, or probe: NVML, then nvidia-smi, then the simulated GPU.

The simulated GPU is the probe's last resort only where no NVIDIA driver is present: on a GPU node
whose bindings are missing or broken, a sweep must stop with the reason, never measure a model
while looking like a measurement. ``open_job_gpu`` is the launcher's way in: the GPU this job was
given (``visibility``), resolved to its UUID.
"""

from __future__ import annotations

import os
import shutil
import sys

from sd_energy_contract import env
from sd_energy_contract.gpus import detect_gpu_type, load_gpu_specs

from ..errors import GpuError, GpuNotFoundError
from .base import GpuBackend, GpuSample
from .visibility import (
    CUDA_VISIBLE,
    Selection,
    VisibleGpu,
    enumerate_nvml,
    enumerate_smi,
    job_positions,
    no_simulated_fallback,
    select_gpu,
)

BACKENDS = ("auto", "nvml", "smi", "dcgm", "simulated", "replay")

SIMULATED_BANNER = ("*** No NVIDIA GPU found: using the SIMULATED {gpu} (configs/gpus.yaml). Clock lists are real; "
                    "power and time are a model. Numbers are synthetic; rows say backend=simulated. ***")


class GpuNotVisible(GpuNotFoundError):  # noqa: N818 - names the state, like the other Gpu* errors
    """The GPU with this UUID is not among the GPUs this job can see (another job's, under SLURM)."""


def open_backend(name: str, index: int = 0, gpu_type: str | None = None, replay_source: str | None = None,
                 replay_app: str | None = None, announce=lambda msg: print(msg, file=sys.stderr)) -> GpuBackend:
    """The backend ``name`` on its device ``index`` (NVML / nvidia-smi numbering). ``auto`` probes."""
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
    return open_backend(probe(), index, gpu_type, announce=announce)


def probe() -> str:
    """What ``auto`` means here: ``nvml`` or ``smi`` where one answers, else ``simulated`` (and only where
    no NVIDIA driver is present: otherwise a GpuNotFoundError with every backend's reason)."""
    if os.environ.get(env.FORCE_SIMULATED) == "1":
        return "simulated"
    errors: dict[str, str] = {}
    for candidate in ("nvml", "smi"):
        if candidate == "smi" and not shutil.which("nvidia-smi"):
            continue
        try:
            gpus = enumerate_gpus(candidate)
        except GpuError as exc:
            errors[candidate] = str(exc)
            continue
        if gpus:
            return candidate
        errors[candidate] = "lists no GPU"
    refusal = no_simulated_fallback(errors)
    if refusal is not None:
        raise refusal
    return "simulated"


def enumerate_gpus(name: str, gpu_type: str | None = None) -> list[VisibleGpu]:
    """The GPUs this job can see through backend ``name``, in its index order."""
    if name == "nvml":
        return enumerate_nvml()
    if name == "smi":
        def indices() -> list[int]:
            gpu = open_backend("smi", 0)
            try:
                return gpu.visible_devices()
            finally:
                gpu.close()
        return enumerate_smi(indices)
    if name == "dcgm":  # DCGM's own control goes through NVML, else nvidia-smi: so does its list
        try:
            return enumerate_nvml()
        except GpuError:
            return enumerate_gpus("smi")
    if name == "simulated":
        from .simulated import SimulatedGpu

        gpu_type = gpu_type or "H100"
        return [VisibleGpu(i, SimulatedGpu(gpu_type, i).uuid()) for i in SimulatedGpu(gpu_type, 0).visible_devices()]
    raise GpuError(f"backend {name!r} has no GPUs to list")


def open_job_gpu(name: str, position: int | None = None, gpu_type: str | None = None, *,
                 allow_mig_whole_gpu: bool = False, replay_source: str | None = None, replay_app: str | None = None,
                 announce=lambda msg: print(msg, file=sys.stderr)) -> tuple[GpuBackend, Selection | None]:
    """The GPU at ``position`` (``--gpu-index``) among those this job's CUDA sees, opened by its index and
    checked by UUID; with the ``Selection`` that says which physical GPU it is and how it was chosen.

    The simulated GPU is not what CUDA sees, so ``CUDA_VISIBLE_DEVICES`` does not apply to it; replay
    measures nothing and has no selection.
    """
    if name == "replay":
        return open_backend(name, position or 0, gpu_type, replay_source, replay_app, announce), None
    if name == "auto":
        name = probe()
    visible = enumerate_gpus(name, gpu_type)
    simulated = name == "simulated"
    sel = select_gpu(visible, position, None if simulated else os.environ.get(CUDA_VISIBLE), allow_mig_whole_gpu,
                     os.environ.get("CUDA_DEVICE_ORDER"))
    if simulated:
        sel = Selection(sel.gpu, sel.position, f"simulated GPU {sel.gpu.index} of {len(visible)} "
                        f"({env.SIMULATED_GPUS}; {CUDA_VISIBLE} does not apply to it)", None)
    backend = open_backend(name, sel.gpu.index, gpu_type, announce=announce)
    uuid = backend.uuid()
    if sel.gpu.uuid is not None and uuid != sel.gpu.uuid:
        backend.close()
        raise GpuError(f"GPU index {sel.gpu.index} is {uuid}, not {sel.gpu.uuid} as listed a moment ago: the GPUs "
                       "this job sees changed while opening; run again")
    if sel.gpu.uuid is None:
        sel = Selection(VisibleGpu(sel.gpu.index, uuid), sel.position, sel.how, sel.cuda_visible_devices,
                        sel.mig_device, sel.mig_mode, sel.notes)
    return backend, sel


def job_gpu_positions(name: str, gpu_type: str | None = None) -> list[int]:
    """The ``--gpu-index`` values of every GPU this job can use through backend ``name``: what its CUDA
    sees (``CUDA_VISIBLE_DEVICES``), else what NVML lists; ``--all-gpus`` sweeps each."""
    if name == "auto":
        name = probe()
    return job_positions(enumerate_gpus(name, gpu_type), None if name == "simulated" else os.environ.get(CUDA_VISIBLE))


def open_by_uuid(name: str, uuid: str, gpu_type: str | None = None) -> GpuBackend:
    """The GPU with this UUID through backend ``name``, wherever this job numbers it (a lock record's GPU
    is found by UUID: its index in the job that wrote it means nothing in this one). Raises
    ``GpuNotVisible`` when this job cannot see it."""
    if name not in BACKENDS or name in ("auto", "replay"):
        raise GpuError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    for gpu in enumerate_gpus(name, gpu_type):
        if gpu.uuid is None:  # a listing without UUIDs: open to learn it
            backend = open_backend(name, gpu.index, gpu_type, announce=lambda m: None)
            if backend.uuid() == uuid:
                return backend
            backend.close()
        elif gpu.uuid == uuid:
            return open_backend(name, gpu.index, gpu_type, announce=lambda m: None)
    raise GpuNotVisible(f"GPU {uuid} is not visible to this job")


__all__ = ["BACKENDS", "GpuBackend", "GpuNotVisible", "GpuSample", "Selection", "VisibleGpu", "detect_gpu_type",
           "enumerate_gpus", "job_gpu_positions", "load_gpu_specs", "open_backend", "open_by_uuid", "open_job_gpu", "probe"]
