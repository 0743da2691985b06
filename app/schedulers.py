"""Scheduler names users type -> the diffusers class and its options.

Schedulers are built ``from_config`` of the pipeline's own scheduler so the model's training
settings (beta schedule, prediction type, timestep spacing) carry over; only the sampler changes.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import diffusers

from .models import FLOW_FAMILIES


@dataclass(frozen=True)
class SchedulerSpec:
    name: str
    class_name: str
    kwargs: dict = field(default_factory=dict)
    flow: bool = False  # flow-matching sampler (SD3, FLUX, Sana) vs noise-prediction sampler
    description: str = ""


_SPECS = [
    SchedulerSpec("dpm++", "DPMSolverMultistepScheduler", {}, description="DPM-Solver++ 2M"),
    SchedulerSpec("dpm++-karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True},
                  description="DPM-Solver++ 2M with Karras sigmas"),
    SchedulerSpec("dpm-sde", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"},
                  description="DPM-Solver++ 2M SDE (stochastic)"),
    SchedulerSpec("euler", "EulerDiscreteScheduler", description="Euler"),
    SchedulerSpec("euler-a", "EulerAncestralDiscreteScheduler", description="Euler ancestral"),
    SchedulerSpec("ddim", "DDIMScheduler", description="DDIM"),
    SchedulerSpec("ddpm", "DDPMScheduler", description="DDPM (ancestral, needs many steps)"),
    SchedulerSpec("pndm", "PNDMScheduler", description="PNDM / PLMS"),
    SchedulerSpec("lms", "LMSDiscreteScheduler", description="linear multistep"),
    SchedulerSpec("heun", "HeunDiscreteScheduler", description="Heun (2 model calls per step)"),
    SchedulerSpec("kdpm2", "KDPM2DiscreteScheduler", description="DPM2 (2 model calls per step)"),
    SchedulerSpec("kdpm2-a", "KDPM2AncestralDiscreteScheduler", description="DPM2 ancestral"),
    SchedulerSpec("unipc", "UniPCMultistepScheduler", description="UniPC"),
    SchedulerSpec("deis", "DEISMultistepScheduler", description="DEIS"),
    SchedulerSpec("lcm", "LCMScheduler", description="latent consistency (for LCM-distilled weights)"),
    SchedulerSpec("flow-euler", "FlowMatchEulerDiscreteScheduler", flow=True,
                  description="flow-matching Euler (SD3, FLUX, Sana)"),
]

SCHEDULERS: dict[str, SchedulerSpec] = {s.name: s for s in _SPECS}


class SchedulerError(ValueError):
    """A scheduler name that is unknown or does not fit the model family; the message lists the fitting ones."""


def get_spec(name: str) -> SchedulerSpec:
    if name not in SCHEDULERS:
        close = difflib.get_close_matches(name, SCHEDULERS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SchedulerError(f"unknown scheduler {name!r}{hint}; see --list-schedulers")
    return SCHEDULERS[name]


def check_fits(name: str, family: str) -> SchedulerSpec:
    """Flow-matching models need a flow sampler and vice versa; mixing them gives noise, not an image."""
    spec = get_spec(name)
    if spec.flow != (family in FLOW_FAMILIES):
        kind = "flow-matching" if family in FLOW_FAMILIES else "noise-prediction"
        fits = sorted(n for n, s in SCHEDULERS.items() if s.flow == (family in FLOW_FAMILIES))
        raise SchedulerError(
            f"scheduler {name!r} does not fit the {kind} model family {family!r}; use one of {', '.join(fits)}"
        )
    return spec


def build(name: str, family: str, base_config: dict):
    spec = check_fits(name, family)
    cls = getattr(diffusers, spec.class_name)
    return cls.from_config(base_config, **spec.kwargs)
