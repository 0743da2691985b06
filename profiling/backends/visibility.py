"""Which GPU this job may measure: trust what the job can see, resolve it to a UUID, refuse MIG slices.

On a SLURM node the numbers disagree. NVML inside a job's device cgroup shows only the job's GPUs,
renumbered from 0 in PCI bus order; ``SLURM_JOB_GPUS``/``SLURM_STEP_GPUS`` hold the node's numbers
(gres.conf order), which can differ from both; ``CUDA_VISIBLE_DEVICES`` holds indices (local under a
cgroup, the node's otherwise) or UUIDs; CUDA numbers devices fastest-first unless
``CUDA_DEVICE_ORDER=PCI_BUS_ID``. So SLURM's numbers never index NVML here. ``--gpu-index N`` means
the N-th GPU the job's CUDA sees (the N-th entry of ``CUDA_VISIBLE_DEVICES`` when it is set, else
NVML index N), resolved to that GPU's UUID; the app is then given exactly that UUID
(``GpuBackend.child_env``), and the manifest records which physical GPU it was (UUID, PCI bus id)
and how it was chosen.

MIG: power, energy and clocks are whole-GPU sensors and controls, so a MIG slice cannot be measured
alone: the other slices' work would be counted as this run's, and a clock lock would slow them
too. A GPU in MIG mode, or a ``MIG-...`` device in ``CUDA_VISIBLE_DEVICES``, is refused unless
``--allow-mig-whole-gpu`` asks to measure the whole GPU (every row then says ``mig=whole-gpu``).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from sd_energy_contract.errors import InputError

from ..errors import GpuError, GpuNotFoundError

CUDA_VISIBLE = "CUDA_VISIBLE_DEVICES"
NO_DEVICES = {"", "-1", "NoDevFiles"}  # what makes CUDA see no GPU (SLURM wrote NoDevFiles for a GPU-less job)
NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")
NVML_DEVICE_MIG_ENABLE = 1
MIG_WHOLE_GPU = "whole-gpu"
MIG_OFF = "off"


@dataclass(frozen=True)
class VisibleGpu:
    """One GPU as this job's backend sees it. ``index``: the backend's own number (NVML and nvidia-smi:
    PCI bus order, renumbered from 0 inside a SLURM cgroup). ``uuid`` None where the backend could not
    list it before opening (nvidia-smi without ``-L`` output)."""

    index: int
    uuid: str | None
    pci_bus_id: str | None = None
    mig_enabled: bool = False
    mig_uuids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Selection:
    """The GPU chosen for a sweep, and why: what the manifest records and what the app is given."""

    gpu: VisibleGpu
    position: int                       # --gpu-index: which of the job's GPUs
    how: str                            # one sentence: how the index was mapped
    cuda_visible_devices: str | None    # as the job had it
    mig_device: str | None = None       # the MIG instance the app runs on, when a MIG GPU is measured whole
    mig_mode: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def mig(self) -> str:
        """The rows' ``mig`` column: ``whole-gpu`` when a GPU in MIG mode is measured whole, else ``off``."""
        return MIG_WHOLE_GPU if self.mig_mode or self.mig_device else MIG_OFF

    def app_env(self, env: dict[str, str]) -> dict[str, str]:
        """The backend's ``child_env`` for the app; a GPU measured whole in MIG mode gives the app its
        MIG instance (CUDA runs only on MIG devices while MIG is on)."""
        if self.mig_device and CUDA_VISIBLE in env:
            return {**env, CUDA_VISIBLE: self.mig_device}
        return dict(env)

    def manifest(self) -> dict:
        return {"index": self.gpu.index, "position": self.position, "uuid": self.gpu.uuid,
                "pci_bus_id": self.gpu.pci_bus_id, "how": self.how, "cuda_visible_devices": self.cuda_visible_devices,
                "mig": self.mig, "mig_device": self.mig_device, "notes": list(self.notes)}


# --------------------------------------------------------------------------- choosing

def parse_cuda_visible(value: str | None) -> list[str] | None:
    """``"0,1"`` -> ["0", "1"]; None when unset (every GPU NVML lists is visible)."""
    if value is None:
        return None
    value = value.strip()
    if value in NO_DEVICES:
        return []
    return [item.strip() for item in value.split(",") if item.strip()]


def select_gpu(visible: Sequence[VisibleGpu], position: int | None, cuda_visible: str | None,
               allow_mig_whole_gpu: bool = False, cuda_device_order: str | None = None) -> Selection:
    """The GPU at ``position`` among the GPUs this job's CUDA sees, mapped to the backend's index.

    Raises InputError (one line naming the option or variable) when the position or an entry of
    ``CUDA_VISIBLE_DEVICES`` names no visible GPU, or when the GPU is a MIG slice (see the module).
    """
    pos = 0 if position is None else position
    if not visible:
        raise InputError("--gpu-index", pos, "this job sees no GPU (NVML lists none): request one (e.g. sbatch "
                         "--gpus=1), or use --profiling-tool simulated")
    entries = parse_cuda_visible(cuda_visible)
    if entries is None:
        if pos >= len(visible):
            raise InputError("--gpu-index", pos, f"this job sees {len(visible)} GPU(s) (--gpu-index 0 to "
                             f"{len(visible) - 1})")
        gpu = visible[pos]
        return _checked(Selection(gpu, pos, f"index {gpu.index} of the {len(visible)} GPU(s) this job sees "
                                  "(CUDA_VISIBLE_DEVICES unset)", None), None, allow_mig_whole_gpu)
    if not entries:
        raise InputError(CUDA_VISIBLE, repr(cuda_visible), "makes no GPU visible to this job's CUDA")
    if pos >= len(entries):
        raise InputError("--gpu-index", pos, f"{CUDA_VISIBLE}={cuda_visible} gives this job {len(entries)} GPU(s) "
                         f"(--gpu-index 0 to {len(entries) - 1})")
    entry = entries[pos]
    gpu, how, mig_entry = _map_entry(visible, entries, pos, cuda_visible)
    notes = ()
    if all(e.isdigit() for e in entries) and len(entries) > 1 and cuda_device_order != "PCI_BUS_ID":
        notes = ("CUDA_DEVICE_ORDER is not PCI_BUS_ID, so the job's own CUDA numbering may differ from PCI order; "
                 "the app is given this GPU by UUID, so it runs on the GPU measured",)
    sel = Selection(gpu, pos, f"{CUDA_VISIBLE}={cuda_visible}: entry {pos} ({entry}) is {how}", cuda_visible,
                    notes=notes)
    return _checked(sel, mig_entry, allow_mig_whole_gpu)


def job_positions(visible: Sequence[VisibleGpu], cuda_visible: str | None) -> list[int]:
    """The ``--gpu-index`` values of every GPU this job can use (``--all-gpus`` sweeps each)."""
    entries = parse_cuda_visible(cuda_visible)
    return list(range(len(visible) if entries is None else len(entries)))


def _map_entry(visible: Sequence[VisibleGpu], entries: list[str], pos: int,
               cuda_visible: str) -> tuple[VisibleGpu, str, str | None]:
    """One ``CUDA_VISIBLE_DEVICES`` entry -> (GPU, how, the MIG device it names or None)."""
    entry = entries[pos]
    if entry.isdigit():
        k = int(entry)
        numbers = [int(e) for e in entries if e.isdigit()]
        if k < len(visible) and max(numbers) < len(visible):
            return visible[k], f"index {k} of the {len(visible)} GPU(s) NVML lists", None
        if len(numbers) == len(entries) == len(visible):
            # The node's numbers (e.g. SLURM without ConstrainDevices on the task plugin) while NVML, inside
            # the job's cgroup, lists only the job's GPUs renumbered from 0: the n-th entry is the n-th GPU.
            return (visible[pos], f"the node's GPU {k}, which this job sees as index {visible[pos].index} (NVML "
                    f"lists only the job's {len(visible)} GPU(s), renumbered from 0)", None)
        raise InputError(CUDA_VISIBLE, cuda_visible, f"names GPU {k}, but this job sees {len(visible)} GPU(s)")
    upper = entry.upper()
    if upper.startswith("MIG-"):
        for gpu in visible:
            parent = upper.startswith(f"MIG-{(gpu.uuid or '?').upper()}")  # old form MIG-GPU-<uuid>/gi/ci
            if parent or any(u.upper().startswith(upper) for u in gpu.mig_uuids):
                return gpu, f"a MIG instance of GPU {gpu.uuid}", entry
        raise InputError(CUDA_VISIBLE, cuda_visible, f"{entry}: no GPU this job sees has this MIG device")
    if upper.startswith("GPU-"):
        hits = [g for g in visible if g.uuid and g.uuid.upper().startswith(upper)]
        if len(hits) == 1:
            return hits[0], f"GPU {hits[0].uuid}", None
        why = "matches more than one GPU" if hits else "is not the UUID of a GPU this job sees"
        raise InputError(CUDA_VISIBLE, cuda_visible, f"{entry} {why}")
    raise InputError(CUDA_VISIBLE, cuda_visible, f"{entry!r} is neither a GPU index, a GPU-... UUID nor a MIG-... UUID")


def _checked(sel: Selection, mig_entry: str | None, allow: bool) -> Selection:
    """Refuse a MIG slice unless the whole GPU is to be measured; then name the instance the app gets."""
    gpu = sel.gpu
    if not (gpu.mig_enabled or mig_entry):
        return sel
    if not allow:
        what = f"{CUDA_VISIBLE} entry {mig_entry} is a MIG slice of" if mig_entry else "is in MIG mode:"
        option, value = (CUDA_VISIBLE, sel.cuda_visible_devices) if mig_entry else ("--gpu-index", sel.position)
        raise InputError(option, value, f"{what} GPU {gpu.uuid}: power, energy and clock sensors are whole-GPU, so a "
                         "MIG slice cannot be measured alone (other slices' work would count as this run's); use a "
                         "GPU with MIG off, or --allow-mig-whole-gpu to measure the whole GPU (rows say mig=whole-gpu)")
    device = mig_entry or (gpu.mig_uuids[0] if gpu.mig_uuids else None)
    return replace(sel, mig_device=device, mig_mode=True,
                   notes=(*sel.notes, f"GPU {gpu.uuid} is in MIG mode: measured whole (--allow-mig-whole-gpu); the "
                          f"app runs on {device or 'the GPU'}, and every slice's work is in the numbers"))


# --------------------------------------------------------------------------- listing what the job sees

def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def enumerate_nvml() -> list[VisibleGpu]:
    """Every GPU NVML lists (inside a SLURM cgroup: only the job's), with UUID, PCI bus id and MIG state."""
    from .nvml import _map_error, _nvml

    nv = _nvml()
    try:
        nv.nvmlInit()
        try:
            return [_nvml_gpu(nv, i) for i in range(nv.nvmlDeviceGetCount())]
        finally:
            with contextlib.suppress(nv.NVMLError):
                nv.nvmlShutdown()
    except nv.NVMLError as exc:
        raise _map_error(nv, exc, "NVML: listing GPUs") from None


def _nvml_gpu(nv, index: int) -> VisibleGpu:
    handle = nv.nvmlDeviceGetHandleByIndex(index)

    def maybe(fn_name: str, *args):
        fn = getattr(nv, fn_name, None)  # older bindings (and test fakes) lack some calls
        if fn is None:
            return None
        try:
            return fn(*args)
        except nv.NVMLError:
            return None

    pci = maybe("nvmlDeviceGetPciInfo", handle)
    mode = maybe("nvmlDeviceGetMigMode", handle)
    mig_on = bool(mode) and mode[0] == NVML_DEVICE_MIG_ENABLE
    migs = []
    for j in range(maybe("nvmlDeviceGetMaxMigDeviceCount", handle) or 0) if mig_on else ():
        mig = maybe("nvmlDeviceGetMigDeviceHandleByIndex", handle, j)
        uuid = maybe("nvmlDeviceGetUUID", mig) if mig is not None else None
        if uuid:
            migs.append(_text(uuid))
    return VisibleGpu(index, _text(nv.nvmlDeviceGetUUID(handle)), _text(pci.busId) if pci is not None else None,
                      mig_on, tuple(migs))


SMI_GPU_LINE = re.compile(r"^GPU (\d+): .*\(UUID: (GPU-[^)]+)\)")
SMI_MIG_LINE = re.compile(r"^\s+MIG .*\(UUID: (MIG-[^)]+)\)")


def parse_smi_list(text: str) -> list[VisibleGpu]:
    """``nvidia-smi -L``: ``GPU 0: NVIDIA H100 NVL (UUID: GPU-...)`` lines, each followed by its MIG devices."""
    gpus: list[VisibleGpu] = []
    for line in text.splitlines():
        m = SMI_GPU_LINE.match(line)
        if m:
            gpus.append(VisibleGpu(int(m.group(1)), m.group(2)))
            continue
        m = SMI_MIG_LINE.match(line)
        if m and gpus:
            last = gpus[-1]
            gpus[-1] = replace(last, mig_enabled=True, mig_uuids=(*last.mig_uuids, m.group(1)))
    return gpus


def enumerate_smi(fallback_indices=None) -> list[VisibleGpu]:
    """The GPUs ``nvidia-smi -L`` lists; where it lists none (an old or restricted nvidia-smi), the
    backend's own ``visible_devices()`` indices, with UUIDs learnt after opening."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        raise GpuNotFoundError("nvidia-smi not found on PATH; is this a GPU node?")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30)
        gpus = parse_smi_list(out.stdout) if out.returncode == 0 else []
        if gpus:
            return gpus
    return [VisibleGpu(i, None) for i in (fallback_indices() if fallback_indices else [0])]


def driver_evidence() -> str | None:
    """Why we believe an NVIDIA driver is installed here (None when nothing says so): a GPU node must
    never quietly measure the simulated GPU because the Python bindings are missing."""
    if NVIDIA_DRIVER_FILE.exists():
        return f"{NVIDIA_DRIVER_FILE} exists"
    exe = shutil.which("nvidia-smi")
    if exe:
        return f"nvidia-smi is on PATH ({exe})"
    return None


def no_simulated_fallback(errors: dict[str, str]) -> GpuError | None:
    """The error to raise instead of falling back to the simulated GPU, or None where there is no driver."""
    evidence = driver_evidence()
    if evidence is None:
        return None
    why = "; ".join(f"{name}: {msg.splitlines()[0] if msg else 'failed'}" for name, msg in errors.items())
    return GpuNotFoundError(f"an NVIDIA driver is present ({evidence}) but no GPU backend could open it ({why}); fix "
                            "that (e.g. pip install nvidia-ml-py), or choose --profiling-tool simulated on purpose")
