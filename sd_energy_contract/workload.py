"""What an in-process workload offers the launcher: load once, then run many measured times.

In process mode the launcher starts the app for every clock x run, and every run reloads the
model. In-process mode (``launch.sh --in-process``, ``profiling.sweep``, the function) loads it once: the
launcher finds a workload factory by name through the ``sd_energy.workloads`` entry point (so
``profiling`` never imports ``app``), calls ``load()`` once, then ``run(ctx)`` for each clock x
run with the GPU already at that clock. A run writes the same phase events and metrics JSON as
the app process does, so both modes give the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

WORKLOADS_GROUP = "sd_energy.workloads"

# (event, phase) at each phase boundary, "start" or "end". Called after the device is
# synchronised; for "start" before the start time is taken and for "end" after the end time is
# taken, so whatever it does (a clock change, say) falls in neither phase.
PhaseHook = Callable[[str, str], None]


@dataclass(frozen=True)
class RunContext:
    run_id: str
    sm_clock_mhz: int | None                 # the locked clock; None at the default clock
    events_path: Path | None = None          # append phase events here (JSON lines)
    metrics_path: Path | None = None         # write the metrics JSON here
    on_phase: PhaseHook | None = None
    warmup: bool = False                     # an unmeasured warm-up run


@runtime_checkable
class Workload(Protocol):
    name: str

    def load(self) -> dict:
        """Load everything once (model weights, compiled kernels); returns the app config for the rows."""

    def run(self, ctx: RunContext) -> dict:
        """One run: generate, record phase events, write and return the metrics JSON (``images`` etc.)."""

    def close(self) -> None:
        """Release the model and device memory."""


# A factory: the workload's own command-line arguments (what --app-params holds in process
# mode) -> a Workload. A bad argument raises sd_energy_contract.errors.InputError.
WorkloadFactory = Callable[[list[str]], Workload]
