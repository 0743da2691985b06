"""The project's own GPU exceptions. Each message says what the user can do about it."""

from __future__ import annotations


class GpuError(RuntimeError):
    """A GPU query or control call failed."""


class GpuNotFoundError(GpuError):
    """No GPU, no driver, or no bindings for the chosen backend."""


class GpuPermissionError(GpuError):
    """Clock control needs privileges the user does not have."""

    def __init__(self, what: str):
        super().__init__(
            f"{what}: no permission to change GPU clocks. Run as root, ask an admin for "
            "`nvidia-smi -acp 0` (lets users set application clocks) or a SLURM prolog that sets clocks, "
            "or measure without clock control using --profiling-mode baseline")


class GpuNotSupportedError(GpuError):
    """The GPU or driver does not offer this feature (e.g. energy counter before Volta)."""


class ClockError(GpuError):
    """A requested clock is not supported, or did not take effect."""
