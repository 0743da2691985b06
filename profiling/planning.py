"""Which clocks a sweep measures: fixed lists (baseline, dvfs, custom, array slices) and planners.

A fixed sweep knows its clocks up front (``select_clocks``, ``slice_clocks``, ``SweepPlan``). In
the adaptive (guided) mode a planner picks the next clock from what was measured so far.

The launcher measures; a planner decides. The planner that knows about power models lives in
``power_modeling`` (``power_modeling.guided``), a layer above ``profiling`` that ``profiling`` must
never import. So the launcher finds planners by name through the ``sd_energy.clock_planners``
entry-point group (declared in setup.cfg, registered by ``pip install -e .``), and talks to them
only through the ``ClockPlanner`` protocol below: plain floats, lists and dicts, no model types.

Errors a planner raises because of its arguments are ``PlannerError`` with ``param`` set to the
keyword argument at fault, so the launcher can name its own command-line option in a one-line
error without knowing what the planner does with the value.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol, runtime_checkable

from sd_energy_contract.errors import InputError
from sd_energy_contract.layout import run_id

ENTRY_POINT_GROUP = "sd_energy.clock_planners"


# --------------------------------------------------------------------------- fixed clock lists

@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: at ``clock`` (None = the default, unlocked clock), repeat ``index``."""

    clock: int | None
    index: int
    warmup: bool = False

    @property
    def run_id(self) -> str:
        return run_id(self.clock, self.index, self.warmup)


CLOCK_ORDERS = ("descending", "ascending", "random", "interleaved")


@dataclass
class SweepPlan:
    """The runs of a fixed sweep, in the order they are measured.

    ``order``: ``descending`` (the default: each clock's runs together, highest clock first, so the
    reference for slowdowns comes first and a sweep cut short has it), ``ascending`` (the same, lowest
    first), ``interleaved`` (repeat r visits every clock, highest first, before repeat r+1) or
    ``random`` (like interleaved, each repeat in a fresh random clock order drawn from ``seed``; a
    seed is drawn and kept in ``seed`` when none is given). The last two spread the GPU's warming
    and any drift over all clocks instead of turning them into a slope. A clock's warm-up runs come
    right before its first measured run. Runs are identified by ``run_id``, so resuming in any
    order redoes exactly the missing ones.
    """

    clocks: list[int | None]            # None = default (unlocked) clock
    num_runs: int
    warmup_runs: int
    order: str = "descending"
    seed: int | None = None
    runs: list[RunSpec] = field(default_factory=list)

    def __post_init__(self):
        if self.order not in CLOCK_ORDERS:
            raise InputError("--clock-order", self.order, f"one of {', '.join(CLOCK_ORDERS)}")
        if self.order == "random" and self.seed is None:
            self.seed = secrets.randbelow(2**31)
        clocks = list(reversed(self.clocks)) if self.order == "ascending" else list(self.clocks)
        if self.order in ("descending", "ascending"):
            for c in clocks:
                self.runs += [RunSpec(c, i, True) for i in range(self.warmup_runs)]
                self.runs += [RunSpec(c, i, False) for i in range(self.num_runs)]
            return
        rng = random.Random(self.seed)
        for i in range(self.num_runs):
            for c in (rng.sample(clocks, len(clocks)) if self.order == "random" else clocks):
                if i == 0:
                    self.runs += [RunSpec(c, w, True) for w in range(self.warmup_runs)]
                self.runs.append(RunSpec(c, i, False))


def nearest(clocks: list[int], target: int, n: int = 3) -> list[int]:
    return sorted(sorted(clocks, key=lambda c: abs(c - target))[:n], reverse=True)


def select_clocks(mode: str, supported: list[int], custom: str | None, fmin: int | None, fmax: int | None,
                  step: int | None) -> list[int | None]:
    """The clock list of a sweep, validated against what the GPU supports.

    In guided mode these are the candidates the planner may choose from (a dvfs sweep's clocks);
    which of them are measured is decided one probe at a time.
    """
    if mode == "baseline":
        return [None]
    if mode == "guided":
        return select_clocks("dvfs", supported, None, fmin, fmax, step)
    hi, lo = supported[0], supported[-1]
    if mode == "custom":
        if not custom:
            raise InputError("--custom-frequencies", None, "required with --profiling-mode custom (e.g. 1410,1200,990)")
        try:
            wanted = [int(x) for x in custom.replace(" ", "").split(",") if x]
        except ValueError:
            raise InputError("--custom-frequencies", custom, "must be comma-separated MHz integers") from None
        if not wanted:
            raise InputError("--custom-frequencies", custom, "names no clock (e.g. 1410,1200,990)")
        for f in wanted:
            if f not in supported:
                raise InputError("--custom-frequencies", f, f"not a supported SM clock; nearest supported: "
                                 f"{', '.join(map(str, nearest(supported, f)))} (range {lo}-{hi} MHz)")
        return sorted(set(wanted), reverse=True)
    fmax = hi if fmax is None else fmax
    fmin = lo if fmin is None else fmin
    for opt, val in (("--max-frequency", fmax), ("--min-frequency", fmin)):
        if not lo <= val <= hi:
            raise InputError(opt, val, f"outside the GPU's supported SM clocks {lo}-{hi} MHz")
    if fmin > fmax:
        raise InputError("--min-frequency", fmin, f"is above --max-frequency {fmax}")
    in_range = [c for c in supported if fmin <= c <= fmax]
    if not step:
        return in_range
    picked, target = [], in_range[0]
    while target >= fmin:
        best = min(in_range, key=lambda c: abs(c - target))
        if best not in picked:
            picked.append(best)
        target -= step
    return sorted(picked, reverse=True)


def slice_clocks(clocks: list, spec: str | None) -> list:
    """``K/N``: the K-th of N contiguous, near-equal slices (the union of all K is the whole list)."""
    if not spec:
        return clocks
    try:
        k, n = (int(x) for x in spec.split("/"))
        if not 0 <= k < n:
            raise ValueError
    except ValueError:
        raise InputError("--clock-slice", spec, "must be K/N with 0 <= K < N, e.g. 0/4") from None
    if n > len(clocks):
        raise InputError("--clock-slice", spec, f"more slices than clocks ({len(clocks)})")
    base, extra = divmod(len(clocks), n)
    start = k * base + min(k, extra)
    return clocks[start:start + base + (k < extra)]


# --------------------------------------------------------------------------- adaptive planners


@runtime_checkable
class ClockPlanner(Protocol):
    """A sequential planner: ask ``next_clock()``, measure it, ``observe(...)``, until None.

    ``observe`` gets the work time and energy of every usable run at that clock (ok, not a
    warm-up, the lock applied); empty lists mean the clock yielded no usable run, and the planner
    must not propose it again. ``features`` are what the launcher measured besides time and
    energy (DCGM activity counters averaged over the runs, where there are any). ``result()`` is
    JSON-serialisable and holds the choice; the launcher writes it to ``guided.json``.
    """

    def next_clock(self) -> float | None: ...

    def observe(self, clock: float, time_s: list[float], energy_j: list[float], features: dict) -> None: ...

    def result(self) -> dict: ...


class PlannerError(ValueError):
    """A planner cannot work with what it was given; ``param`` names the keyword argument at fault.

    ``param`` is None when no single argument is to blame (e.g. a broken installation), and
    ``value`` is the offending value where there is one.
    """

    def __init__(self, message: str, param: str | None = None, value: Any = None):
        super().__init__(message)
        self.param = param
        self.value = value


def _find(name: str) -> EntryPoint | None:
    return next(iter(entry_points(group=ENTRY_POINT_GROUP, name=name)), None)


def available_planners() -> list[str]:
    """Names of the installed planners (for messages)."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def load_planner(name: str, **kwargs: Any) -> ClockPlanner:
    """The planner ``name`` built with ``kwargs``, found through the entry-point group.

    A missing entry point is almost always a checkout whose package metadata is stale (the group
    was added after the last install), so the error says how to fix that.
    """
    ep = _find(name)
    if ep is None:
        have = available_planners()
        raise PlannerError(f"no clock planner {name!r} is registered in entry-point group {ENTRY_POINT_GROUP!r}"
                           f" ({'installed: ' + ', '.join(have) if have else 'none installed'}); "
                           "run `pip install -e .` in the repository to register it")
    try:
        factory: Callable[..., ClockPlanner] = ep.load()
    except (ImportError, AttributeError) as exc:
        raise PlannerError(f"clock planner {name!r} ({ep.value}) cannot be loaded ({type(exc).__name__}: {exc}); "
                           "run `pip install -e .` in the repository") from None
    planner = factory(**kwargs)
    missing = [m for m in ("next_clock", "observe", "result") if not callable(getattr(planner, m, None))]
    if missing:
        raise PlannerError(f"clock planner {name!r} ({ep.value}) returned {type(planner).__name__}, "
                           f"which lacks {', '.join(missing)}")
    return planner
