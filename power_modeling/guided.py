"""The ``guided`` clock planner the launcher finds by name (entry point ``sd_energy.clock_planners``).

``make_planner`` wraps ``selection.GuidedSearch`` (max clock first, then one probe at a time at
the optimum of the cross-workload prediction tilted to the probes so far) in the plain-types
protocol of ``profiling.planning.ClockPlanner``, so the launcher can run it without importing
this package. What the wrapper adds to the search:

* the model: a ``--guided-model`` file (``model_store.load_model``), or by default the shipped
  model trained on the 24 reference V100 applications, with or without activity counters
  depending on what the first (max-clock) probe measured: DCGM and the reference data have the
  counters, NVML-only measurements such as the Stable Diffusion runs do not, and a model that
  needs counters cannot predict for a run without them;
* the GPU type's TDP (configs/gpus.yaml) as a feature, so the model's "power at max / TDP" means
  the same on an H100 as on the V100s it was trained on;
* clocks that yielded no usable run (all failed, or the lock did not apply) are never proposed
  again, and count against ``max_probes``; a failed max clock ends the search (no reference);
* ``result()`` says which model was used and where the workload leaves the ground the model was
  trained on (``CrossWorkloadModel.extrapolation``: another GPU type, features outside the
  trained range), and is strict JSON (no NaN: ``None`` where an interval is unknown).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from profiling.planning import PlannerError
from sd_energy_contract.gpus import gpu_tdp_w

from .io import DataError
from .models import POWER_TDP
from .selection import OBJECTIVES, GuidedSearch

# Held-out reference apps, launcher with early stop (docs/BENCHMARKS.md): stopping from the 2nd probe
# on gave 2.65 % mean EDP regret with 2.5 clocks, from the 4th 1.08 % with 4 (5 fixed probes: 1.12 %).
DEFAULT_MIN_PROBES = 4


def _json_safe(value: Any) -> Any:
    """Plain JSON types; NaN and infinities become None (``json.dumps`` would write bare NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _model_info(model, source: str, path: str | None) -> dict:
    meta = getattr(model, "metadata_", {}) or {}
    acts = list(getattr(model, "activity_names_", []))
    info = {"source": source, "path": path, "activity": bool(acts), "features": list(getattr(model, "feature_names_", [])),
            "trained_gpus": list(getattr(model, "trained_gpus_", [])),
            "trained_workloads": len(getattr(model, "workloads_", []))}
    info.update({k: meta[k] for k in ("created_utc", "trained_on") if k in meta})
    return info


class GuidedPlanner:
    """``profiling.planning.ClockPlanner`` over ``GuidedSearch``; see the module docstring.

    The model is chosen at the first observation (the max clock), because only then is it known
    whether the workload has activity counters; an explicit model file is loaded (and so
    validated) at construction, before the launcher creates anything.
    """

    def __init__(self, clocks: Sequence[float], model_path: str | Path | None = None, objective: str = "edp",
                 max_probes: int = 5, max_slowdown: float | None = None, min_gap: float = 0.05,
                 stop_gain: float | None = 0.0, gpu_type: str | None = None, min_probes: int | None = None):
        if objective not in OBJECTIVES:
            raise PlannerError(f"unknown objective; choose from {', '.join(OBJECTIVES)}", "objective", objective)
        if not isinstance(max_probes, (int, np.integer)) or max_probes < 2:
            raise PlannerError("must be at least 2 (the max clock and one more)", "max_probes", max_probes)
        min_probes = min(DEFAULT_MIN_PROBES, max_probes) if min_probes is None else min_probes
        if not isinstance(min_probes, (int, np.integer)) or not 1 <= min_probes <= max_probes:
            raise PlannerError(f"must be between 1 and the most probes ({max_probes})", "min_probes", min_probes)
        if max_slowdown is not None and not (math.isfinite(max_slowdown) and max_slowdown >= 0):
            raise PlannerError("must be a finite fraction >= 0, or None for no limit", "max_slowdown", max_slowdown)
        cands = sorted({float(c) for c in clocks}, reverse=True)
        if not cands:
            raise PlannerError("no candidate clock", "clocks", list(clocks))
        self.gpu_type = gpu_type
        self.tdp_w = gpu_tdp_w(gpu_type)
        self.model_path = None if model_path is None else str(model_path)
        self.model = None
        self.model_info: dict = {}
        self.failed: list[float] = []
        self.stop_reason = ""
        if self.model_path is not None:
            from .model_store import load_model

            try:
                model = load_model(self.model_path)
            except DataError as exc:
                raise PlannerError(str(exc), "model_path", self.model_path) from None
            self._needs_tdp(model)
            self.model, self.model_info = model, _model_info(model, "file", self.model_path)
        else:
            self._check_shipped()
        self.search = GuidedSearch(cands, self.model, objective, int(max_probes), max_slowdown, min_gap, stop_gain,
                                   int(min_probes))

    # ---- model choice
    def _needs_tdp(self, model) -> None:
        if getattr(model, "power_feature_", None) == POWER_TDP and self.tdp_w is None:
            raise PlannerError(f"the model uses power relative to the GPU's TDP and the TDP of GPU type "
                               f"{self.gpu_type!r} is unknown (configs/gpus.yaml); give a known --gpu-type",
                               "gpu_type", self.gpu_type)

    @staticmethod
    def _check_shipped() -> None:
        """Fail before anything is measured when the shipped model files are not installed."""
        from . import model_store

        data_dir, names = getattr(model_store, "DATA_DIR", None), getattr(model_store, "SHIPPED", None)
        if data_dir is None or not isinstance(names, Mapping):
            return  # layout unknown: loading will say what is wrong
        missing = [str(Path(data_dir) / n) for n in names.values() if not (Path(data_dir) / n).is_file()]
        if missing:
            raise PlannerError(f"the shipped model is not installed ({', '.join(missing)} missing); "
                               "give a model file or rebuild them with model_store.train_shipped_models",
                               "model_path", None)

    def _choose_shipped(self, features: Mapping) -> None:
        """The activity model when the max-clock probe has every counter it uses, else the one without."""
        from .model_store import shipped_model

        try:
            model = shipped_model(activity=True)
            acts = [c.removesuffix("_at_max") for c in getattr(model, "activity_names_", [])]
            has = bool(acts) and all(math.isfinite(features.get(c, math.nan)) for c in acts)
            if not has:
                model = shipped_model(activity=False)
        except DataError as exc:
            raise PlannerError(str(exc), "model_path", None) from None
        self._needs_tdp(model)
        label = "shipped (activity)" if has else "shipped (no activity)"
        self.model, self.model_info = model, _model_info(model, label, None)
        self.search.model = model

    # ---- protocol
    def next_clock(self) -> float | None:
        if self.stop_reason:
            return None
        f = self.search.next_clock()
        if f is None:
            self.stop_reason = self.search.stop_reason
        return f

    def observe(self, clock: float, time_s: Sequence[float], energy_j: Sequence[float],
                features: Mapping | None = None) -> None:
        """One probe's usable runs; empty lists mark the clock as failed (it is not proposed again)."""
        clock = float(clock)
        pairs = [(float(t), float(e)) for t, e in zip(time_s, energy_j, strict=True)
                 if math.isfinite(float(t)) and math.isfinite(float(e)) and float(t) > 0 and float(e) > 0]
        if not pairs:
            self.failed.append(clock)
            self.search.mark_failed(clock)
            return
        feats = {str(k): float(v) for k, v in (features or {}).items()
                 if isinstance(v, (int, float, np.number)) and math.isfinite(float(v))}
        if self.tdp_w is not None:
            feats["tdp_w"] = self.tdp_w
        if self.model is None and clock == self.search.fmax:
            self._choose_shipped(feats)
        ts, es = zip(*pairs, strict=True)
        try:
            self.search.observe(clock, list(ts), list(es), feats)
        except DataError as exc:  # e.g. an activity model given a run without counters
            raise PlannerError(str(exc), "model_path" if self.model_path else None, self.model_path) from None

    def result(self) -> dict:
        """``GuidedSearch.result()`` plus the model used, extrapolation notes and the search's bounds."""
        s = self.search
        base = {"planner": "guided", "gpu_type": self.gpu_type, "tdp_w": self.tdp_w, "max_probes": s.max_probes,
                "min_gap": s.min_gap, "stop_gain": s.stop_gain,
                "candidates_mhz": {"max": float(s.clocks[0]), "min": float(s.clocks[-1]), "count": len(s.clocks)},
                "failed_mhz": sorted(self.failed, reverse=True), "model": self.model_info}
        if s.fmax not in s.probes:
            return _json_safe({**base, "objective": s.objective, "max_slowdown": s.max_slowdown, "clock_mhz": None,
                               "probes_mhz": [], "stop_reason": self.stop_reason or "the max clock was not measured",
                               "extrapolation": []})
        out = s.result()
        out["stop_reason"] = self.stop_reason or s.stop_reason
        out["extrapolation"] = self._extrapolation(out.get("extrapolation", []))
        out["probes_mhz"] = list(s.probes)  # in the order measured: the max clock first
        return _json_safe({**base, **out})

    def _extrapolation(self, fallback: list[str]) -> list[str]:
        """The model's notes with the GPU type in the table, so "GPU H100 not in training data" shows."""
        notes = getattr(self.model, "extrapolation", None)
        if not callable(notes):
            return list(fallback)
        # The same rows the search predicted from (GuidedSearch builds them from the max-clock probe).
        table = self.search._curve_inputs(self.search.probes[self.search.fmax])
        if self.gpu_type:
            table = table.assign(gpu=self.gpu_type)
        try:
            return list(notes(table))
        except DataError:
            return list(fallback)


def make_planner(clocks: Sequence[float], model_path: str | Path | None = None, objective: str = "edp",
                 max_probes: int = 5, max_slowdown: float | None = None, min_gap: float = 0.05,
                 stop_gain: float | None = 0.0, gpu_type: str | None = None,
                 min_probes: int | None = None) -> GuidedPlanner:
    """The guided planner (entry point ``guided`` of ``sd_energy.clock_planners``).

    ``clocks``: the candidate SM clocks (MHz); ``model_path``: a saved ``CrossWorkloadModel``
    (default: the shipped one, with or without activity counters as the max-clock probe allows);
    ``max_probes``: most clocks measured, the max clock included; ``stop_gain``: stop early when
    the next probe is not predicted to beat the best measured one by more than this fraction plus
    the noise (None: never stop early), but never before ``min_probes`` clocks are measured
    (default: 4, or ``max_probes`` if fewer);
    ``gpu_type``: for its TDP. Raises
    ``profiling.planning.PlannerError`` naming the argument at fault.
    """
    return GuidedPlanner(clocks, model_path, objective, max_probes, max_slowdown, min_gap, stop_gain, gpu_type,
                         min_probes)
