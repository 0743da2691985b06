"""Clock planners: what picks the next clock to measure in the launcher's adaptive (guided) mode.

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

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol, runtime_checkable

ENTRY_POINT_GROUP = "sd_energy.clock_planners"


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
