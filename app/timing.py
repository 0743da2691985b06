"""Device-synchronised phase timing and the phase-events file the monitor reads.

Times are CLOCK_MONOTONIC (``time.monotonic``), shared by every process on a host, so the
launcher's power samples and the app's phase boundaries line up without clock exchange.

Every boundary goes through ``PhaseRecorder.mark``, which is also where an in-process launcher
gets control (``on_phase``, see ``sd_energy_contract.workload``): after the device is
synchronised, before a start time is taken and after an end time is taken, so whatever the hook
does (a clock change) is part of neither phase.

``BatchTiming`` turns one diffusers pipeline call into those phases with forward pre-hooks on its
models, registered for the call and removed after it, so the measured work is exactly what a
plain diffusers user runs (``benchmarks/bench_app_overhead.py`` checks the cost).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from sd_energy_contract import env
from sd_energy_contract.workload import PhaseHook

EVENTS_ENV = env.EVENTS_FILE


def synchronize(device: str) -> None:
    """Wait for queued kernels so a timestamp means the work is done, not merely launched."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


class PhaseRecorder:
    """Accumulates phase durations and appends one JSON line per boundary to the events file."""

    def __init__(self, device: str, events_path: str | Path | None = None, on_phase: PhaseHook | None = None):
        self.device = device
        self.on_phase = on_phase
        self.totals_s: dict[str, float] = defaultdict(float)
        self._events_path = events_path
        self._events = None  # opened at the first event: a request refused by its checks leaves no file

    @classmethod
    def from_env(cls, device: str) -> PhaseRecorder:
        """Process mode: the launcher names the events file in ``SD_ENERGY_EVENTS_FILE``."""
        return cls(device, os.environ.get(EVENTS_ENV) or None)

    def mark(self, event: str, phase: str, **extra) -> float:
        """One boundary: synchronise, hand control to ``on_phase`` outside the phase, timestamp, record."""
        synchronize(self.device)
        if event == "start" and self.on_phase is not None:
            self.on_phase(event, phase)
        now = time.monotonic()
        if self._events_path is not None:
            if self._events is None:
                # Line-buffered append: each event reaches the file as one whole line, in order with
                # the lines an in-process launcher appends to the same file from ``on_phase``.
                self._events = open(self._events_path, "a", buffering=1)  # noqa: SIM115
            self._events.write(json.dumps({"event": event, "phase": phase, "mono_s": now, **extra}) + "\n")
        if event == "end" and self.on_phase is not None:
            self.on_phase(event, phase)
        return now

    def start(self, name: str, **extra) -> float:
        return self.mark("start", name, **extra)

    def end(self, name: str, started: float, **extra) -> float:
        """Close a phase opened at ``started`` (``start``'s return) and add it to the totals."""
        now = self.mark("end", name, **extra)
        self.totals_s[name] += now - started
        return now

    @contextmanager
    def phase(self, name: str, **extra):
        t0 = self.start(name, **extra)
        try:
            yield
        finally:
            self.end(name, t0, **extra)

    def close(self) -> None:
        """Close the events file; a later event opens it again (appending)."""
        if self._events is not None:
            self._events.close()
            self._events = None


# --------------------------------------------------------------------------- one pipeline call, timed from inside

# The text encoders a pipeline may carry (SDXL has two, SD3 three); absent ones are None or missing.
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def denoiser(pipe) -> torch.nn.Module:
    """The model the denoising loop calls: the UNet, or the transformer of the DiT families."""
    return getattr(pipe, "unet", None) or pipe.transformer


def denoising_plan(scheduler) -> tuple[int, int, int] | None:
    """(loop iterations, lead-in iterations, iterations per step) of the pipeline call about to run, or None.

    A pipeline loops once per entry of ``scheduler.timesteps`` (from ``begin_index`` on, for img2img),
    and that is not always once per denoising step: PNDM adds an iteration at a repeated timestep (PLMS's
    start-up), Heun and DPM2 (``order`` 2) take two iterations per step. diffusers' own progress bar counts
    ``num_inference_steps`` steps with this grouping, used here unchanged: the first ``lead-in``
    iterations join the first step, then a step ends every ``order`` iterations and at the last one.
    Read at the first denoiser call, once the pipeline has set the timesteps.
    """
    steps = getattr(scheduler, "num_inference_steps", None)
    timesteps = getattr(scheduler, "timesteps", None)
    if not steps or timesteps is None:
        return None
    order = max(1, int(getattr(scheduler, "order", 1) or 1))
    begin = getattr(scheduler, "begin_index", None) or 0
    iterations = len(timesteps) - begin
    return iterations, iterations - (steps - begin // order) * order, order


class DenoiserCalls:
    """Which denoising step each call of the denoiser belongs to, from the calls alone.

    A loop iteration may call the denoiser more than once at one timestep (FLUX's true guidance runs it
    twice); the number of calls per iteration is read from the first iteration, as the number of calls
    before the timestep first changes, so only the first iteration's timesteps are ever read (reading
    one waits for the device). Iterations then make steps as ``denoising_plan`` says; without a plan
    (a scheduler that keeps no ``num_inference_steps``) every iteration is a step.
    """

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.plan: tuple[int, int, int] | None = None
        self.calls = 0
        self.per_iteration: int | None = None
        self.first_timestep: float | None = None
        self.iteration = 0
        self.step = 0

    @property
    def needs_timestep(self) -> bool:
        """True until the calls per iteration are known."""
        return self.per_iteration is None

    def _ends_step(self, iteration: int) -> bool:
        if self.plan is None:
            return True
        iterations, lead_in, order = self.plan
        return iteration == iterations - 1 or (iteration + 1 > lead_in and (iteration + 1) % order == 0)

    def step_of_call(self, timestep: float | None) -> int:
        """Count one denoiser call at ``timestep`` (None: unknown); returns its denoising step (0-based)."""
        if self.calls == 0:
            self.plan = denoising_plan(self.scheduler)
            self.first_timestep = timestep
            if timestep is None:
                self.per_iteration = 1  # nothing to group calls by: one call, one iteration
        elif self.per_iteration is None and timestep != self.first_timestep:
            self.per_iteration = self.calls
        iteration = self.calls // self.per_iteration if self.per_iteration else 0
        self.calls += 1
        while self.iteration < iteration:
            self.step += int(self._ends_step(self.iteration))
            self.iteration += 1
        return self.step


def timestep_value(args: tuple, kwargs: dict) -> float | None:
    """The timestep a denoiser call was given (UNets take it second, transformers as ``timestep=``)."""
    t = kwargs["timestep"] if "timestep" in kwargs else args[1] if len(args) > 1 else None
    if isinstance(t, torch.Tensor):
        return float(t.reshape(-1)[0]) if t.numel() else None
    return float(t) if isinstance(t, int | float) else None


class BatchTiming:
    """Times one pipeline call from inside, with forward pre-hooks on its models: no family depends on
    its pipeline honouring a step callback (the PixArt pipelines ignore ``callback_on_step_end``).

    Leaf phases open when a model starts and last until the next boundary: ``text_encode`` from
    the first text-encoder call (there may be several: two encoders, the negative prompt) to the
    first denoiser call; each ``denoise_step`` from the first denoiser call of its step (see
    ``DenoiserCalls``: PNDM's extra start-up call and Heun's second call are not steps of their own)
    to the first call of the next step, or to the first VAE decoder call; ``vae_decode`` from there
    (slices and tiles make several calls) to the end of the pipeline call. So consecutive model calls
    of one kind are one span, and a per-phase clock switches once per phase, not once per call.
    Each step's end runs ``step_hook`` (the simulated GPU's clock dilation) inside the step.

    The VAE decoder's input is also checked for NaN/inf on the device (``latents_finite``, read after
    the call), so a run whose latents went non-finite can be stopped: NaN arithmetic draws other power.
    """

    def __init__(self, recorder: PhaseRecorder, batch_index: int, step_hook: Callable[[float], None] | None = None):
        self.recorder = recorder
        self.batch_index = batch_index
        self.step_hook = step_hook
        self.step_times_s: list[float] = []
        self.latents_finite: list[torch.Tensor] = []  # one 0-d bool per decoder call, still on the device
        self._open: tuple[str, dict, float] | None = None  # (phase, event fields, start time)
        self._calls: DenoiserCalls | None = None
        self._aborted = False

    def _enter(self, phase: str, **extra) -> None:
        if self._open is not None and self._open[0] == phase and self._open[1].get("step") == extra.get("step"):
            return  # the same phase goes on (another encoder, another call within the step, a tile)
        self.finish()
        extra["batch"] = self.batch_index
        self._open = (phase, extra, self.recorder.start(phase, **extra))

    def finish(self) -> float | None:
        """Close the open phase, if any (a step runs ``step_hook`` first); returns its duration."""
        if self._open is None:
            return None
        if self._open[0] == "denoise_step" and not self._aborted:
            if self.step_hook is not None:
                synchronize(self.recorder.device)
                self.step_hook(time.monotonic() - self._open[2])
        phase, extra, t0 = self._open
        self._open = None
        took = self.recorder.end(phase, t0, **extra) - t0
        if phase == "denoise_step":
            self.step_times_s.append(took)
        return took

    # torch forward pre-hooks, registered for one pipeline call. Kept out of torch.compile's
    # tracing: they do I/O, and a compiled denoiser must not recompile for each new hook.
    @torch.compiler.disable
    def before_text_encoder(self, module, args) -> None:
        self._enter("text_encode")

    @torch.compiler.disable
    def before_denoiser(self, module, args, kwargs) -> None:
        calls = self._calls
        timestep = timestep_value(args, kwargs) if calls.needs_timestep else None
        self._enter("denoise_step", step=calls.step_of_call(timestep))

    @torch.compiler.disable
    def before_vae_encoder(self, module, args) -> None:
        self.finish()  # img2img encodes its input image: part of the batch, no phase of its own

    @torch.compiler.disable
    def before_vae_decoder(self, module, args) -> None:
        self._enter("vae_decode")
        if args and isinstance(args[0], torch.Tensor):
            self.latents_finite.append(torch.isfinite(args[0]).all())  # no wait: read after the call

    @contextmanager
    def hooked(self, pipe):
        """Forward pre-hooks on the pipeline's text encoders, denoiser and VAE, removed after the call."""
        self._calls = DenoiserCalls(pipe.scheduler)
        targets = [(getattr(pipe, name, None), self.before_text_encoder, False) for name in TEXT_ENCODERS]
        targets += [(denoiser(pipe), self.before_denoiser, True),
                    (getattr(pipe.vae, "encoder", None), self.before_vae_encoder, False),
                    (getattr(pipe.vae, "decoder", None), self.before_vae_decoder, False)]
        handles = [m.register_forward_pre_hook(hook, with_kwargs=kw) for m, hook, kw in targets
                   if isinstance(m, torch.nn.Module)]
        try:
            yield self
        except BaseException:
            self._aborted = True  # a failed call (out of memory) closes its phase without pacing it
            raise
        finally:
            for h in handles:
                h.remove()
            self.finish()
