"""The app's phases: the names in its events file and what the monitor and the analysis make of them.

A phase is a span between a ``start`` and an ``end`` event. They nest: ``batch`` holds
``text_encode``, one ``denoise_step`` per step and ``vae_decode``; ``process`` is what the
monitor calls a sample taken while the app runs outside every phase.
"""

from __future__ import annotations

LOAD, WARMUP, BATCH, TEXT_ENCODE, DENOISE_STEP, VAE_DECODE, SAVE = (
    "load", "warmup", "batch", "text_encode", "denoise_step", "vae_decode", "save")
PROCESS = "process"

# Which phase a sample belongs to when several are open: the innermost, most specific one first.
PHASE_PRIORITY = (DENOISE_STEP, TEXT_ENCODE, VAE_DECODE, SAVE, WARMUP, BATCH, LOAD)
# The phases that hold others: stacking their energy with their leaves' would count it twice.
CONTAINER_PHASES = (BATCH, PROCESS)
LEAF_PHASES = (LOAD, WARMUP, TEXT_ENCODE, DENOISE_STEP, VAE_DECODE, SAVE)
# Steady-state generation: what a run's activity counters are averaged over.
WORK_PHASES = frozenset({DENOISE_STEP, TEXT_ENCODE, VAE_DECODE, BATCH})
# Names a per-phase clock policy (--phase-clocks) may set: the leaves that do GPU work.
CLOCKED_PHASES = {"denoise": DENOISE_STEP, "text_encode": TEXT_ENCODE, "vae_decode": VAE_DECODE}
