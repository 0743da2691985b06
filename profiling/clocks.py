"""Clock control that always puts the GPU back: lock records, atexit, and signal handlers.

Before a clock is locked, a lock record (JSON: backend, GPU UUID, pid, host) is written. It is
removed only after the clocks are reset. So every exit path is covered:

* normal exit and exceptions: ``ClockGuard.__exit__`` / ``atexit`` reset the clocks;
* SIGINT, SIGTERM, SIGUSR1 (SLURM's warning before the time limit), SIGHUP: turned into
  ``Interrupted``, which unwinds through the same path;
* SIGKILL (nothing runs): the record stays, and the next launch on that host (or
  ``--reset-clocks``) finds it, sees its process is gone, and resets that GPU, found by UUID,
  before doing anything else. A record whose GPU this job cannot see (another job's, under
  SLURM) is kept for a later job that can; the site's SLURM epilog resets clocks anyway.

Where the records live (``lock_dir``) matters on clusters: the directory must be writable on every
compute node and still there for the next job on the same host. ``$XDG_RUNTIME_DIR`` fails both
(SLURM copies the login node's value into the job, and that directory is per login session), and
a job-private ``/tmp`` (SLURM ``job_container/tmpfs``) vanishes with the job. ``/var/tmp`` is
host-wide, outlives jobs and reboots, and is writable by every user; ``/dev/shm`` is the fallback.

Three ways a clock takes effect (``--clock-control``): ``lock`` (locked clocks; on NO_PERMISSION the
NVML backend falls back to application clocks where ``nvidia-smi -acp 0`` allows them),
``application`` (application clocks only), ``slurm`` (the site sets the clock, ``srun``/``sbatch
--gpu-freq``: nothing is set here, the clock is read back and must be the run's). Every row records
which one took effect (``clock_method``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import tempfile
import time
from pathlib import Path

from sd_energy_contract import env
from sd_energy_contract.errors import InputError
from sd_energy_contract.files import write_atomic

from .backends.base import GpuBackend
from .errors import ClockError

LOCK_DIR_ENV = env.LOCK_DIR
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)
# Host-wide, surviving the job, writable by all users: in this order (see the module docstring).
LOCK_BASES = (Path("/var/tmp"), Path("/dev/shm"))
CLOCK_CONTROLS = ("lock", "application", "slurm")
SLURM_VERIFIED = "slurm-verified"


class Interrupted(BaseException):  # noqa: N818 - a control-flow signal, like KeyboardInterrupt
    """A signal asked the sweep to stop; clocks are restored while this unwinds."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _own_dir(path: Path) -> bool:
    """``path`` is (or now is) a directory of this user's that this process can write."""
    try:
        path.mkdir(mode=0o700, parents=False, exist_ok=True)
        st = path.stat()
    except OSError:
        return False
    return st.st_uid == os.getuid() and os.access(path, os.W_OK | os.X_OK)


def lock_dir() -> Path:
    """Where this user's lock records go: ``$SD_ENERGY_LOCK_DIR`` when set, else the first usable of
    ``/var/tmp/sd-energy-<uid>`` and ``/dev/shm/sd-energy-<uid>``, else the temp directory."""
    explicit = os.environ.get(LOCK_DIR_ENV)
    if explicit:
        return Path(explicit)
    name = f"sd-energy-{os.getuid()}"
    for base in LOCK_BASES:
        if base.is_dir() and _own_dir(base / name):
            return base / name
    return Path(tempfile.gettempdir()) / name


def lock_dirs() -> list[Path]:
    """Every directory a record may be in: ``lock_dir()`` first, then (unless ``$SD_ENERGY_LOCK_DIR``
    names the one place) the other defaults and the older versions' ``$XDG_RUNTIME_DIR`` and ``/tmp``
    ones, so a record written before a fallback or an upgrade is still found."""
    first = lock_dir()
    if os.environ.get(LOCK_DIR_ENV):
        return [first]
    uid = os.getuid()
    others = [base / f"sd-energy-{uid}" for base in LOCK_BASES]
    others += [Path(tempfile.gettempdir()) / f"sd-energy-{uid}", Path("/tmp") / f"sd-energy-locks-{uid}"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        others.append(Path(os.environ["XDG_RUNTIME_DIR"]) / f"sd-energy-locks-{uid}")
    out = [first]
    for path in others:
        if path not in out and path.is_dir():
            out.append(path)
    return out


def _record_path(backend: GpuBackend) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in backend.uuid())
    return lock_dir() / f"{safe}.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(backend: GpuBackend) -> dict | None:
    """The lock record of a live process on this host holding ``backend``'s GPU (this process
    included), with its ``path``; None when the GPU is free or its record is stale."""
    path = _record_path(backend)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("host") == socket.gethostname() and _pid_alive(int(rec.get("pid", -1))):
        return {**rec, "path": str(path)}
    return None


def stale_records() -> list[dict]:
    """Lock records on this host whose process is gone; a record that cannot be read as one comes
    back with ``unreadable`` set, so the caller can move it aside instead of tripping on it forever."""
    out = []
    for path in (p for d in lock_dirs() for p in sorted(d.glob("*.json"))):
        try:
            rec = json.loads(path.read_text())
            pid = int(rec.get("pid", -1))
            host = rec.get("host")
            if not isinstance(rec.get("gpu_uuid"), str) or not isinstance(rec.get("backend"), str):
                raise TypeError("no gpu_uuid/backend")
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            out.append({"path": str(path), "unreadable": f"not a lock record ({type(exc).__name__})"})
            continue
        if host == socket.gethostname() and not _pid_alive(pid):
            out.append({**rec, "path": str(path)})
    return out


def _open_by_uuid(rec: dict) -> GpuBackend:
    from .backends import open_by_uuid

    return open_by_uuid(rec["backend"], rec["gpu_uuid"], rec.get("gpu_type"))


def restore_stale(open_backend_fn=_open_by_uuid, log=print) -> list[dict]:
    """Reset the clocks of every GPU a dead launcher left locked, found by UUID; returns what it restored.

    A record whose GPU this job cannot see (``GpuNotVisible``: another job's GPU under SLURM) is
    skipped in one line and kept for a later job that can see it. A record that cannot be restored
    otherwise (garbage, an unknown backend) is reported in one line and moved aside
    (``<name>.bad``): it must never block every later launch.
    """
    from .backends import GpuNotVisible

    restored = []
    for rec in stale_records():
        path = Path(rec["path"])
        why = rec.get("unreadable")
        if why is None:
            try:
                backend = open_backend_fn(rec)
                try:
                    backend.reset_clocks()
                finally:
                    backend.close()
            except GpuNotVisible:
                log(f"lock record {path}: GPU {rec.get('gpu_uuid')} ({rec.get('sm_clock_mhz')} MHz, pid "
                    f"{rec.get('pid')}) is not visible to this job; kept for a later job that can see it")
                continue
            except Exception as exc:  # noqa: BLE001 - any failure here is reported, never fatal
                why = f"cannot restore it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        if why is not None:
            aside = path.with_name(path.name + ".bad")
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            log(f"lock record {path}: {why}; moved to {aside.name}, going on")
            continue
        path.unlink(missing_ok=True)
        log(f"restored clocks of {rec.get('gpu_uuid')} left locked by pid {rec.get('pid')} ({rec.get('backend')}, "
            f"{rec.get('sm_clock_mhz')} MHz)")
        restored.append(rec)
    return restored


def clock_step_mhz(supported: list[int], mhz: int) -> int:
    """The distance from ``mhz`` to its nearest other supported clock (one clock step: 15 MHz on
    A100/H100, 7 or 8 on V100); SLURM's ``--gpu-freq`` rounds to a supported clock, so a read-back
    within one step is the clock asked for."""
    gaps = [abs(c - mhz) for c in supported if c != mhz]
    return min(gaps) if gaps else 15


def check_clock_control(control: str, clocks: list[int | None]) -> None:
    """What a plan must be for ``control``: under ``slurm`` the site sets one clock per job step, so
    the plan may hold only one locked clock (the default clock needs nothing set)."""
    locked = sorted({c for c in clocks if c is not None}, reverse=True)
    if control == "slurm" and len(locked) > 1:
        raise InputError("--clock-control", control, f"SLURM sets one clock per job step (--gpu-freq), and this plan "
                         f"has {len(locked)} ({', '.join(map(str, locked[:4]))}{', ...' if len(locked) > 4 else ''}): "
                         "launch once per clock, e.g. `srun --gpu-freq=MHZ launch.sh --clock-control slurm "
                         "--profiling-mode custom --custom-frequencies MHZ`, or `python -m profiling.slurm submit GPU "
                         "EXPERIMENT --per-clock`")


class ClockGuard:
    """Set clocks inside a ``with`` block (the way ``control`` says); reset them on every way out.

    ``method`` is how the current clock took effect: "locked", "application", "slurm-verified", or
    None while the GPU runs at its default clock.
    """

    def __init__(self, backend: GpuBackend, gpu_type: str | None = None, control: str = "lock"):
        if control not in CLOCK_CONTROLS:
            raise InputError("--clock-control", control, f"one of {', '.join(CLOCK_CONTROLS)}")
        self.backend = backend
        self.gpu_type = gpu_type
        self.control = control
        self.record = _record_path(backend)
        self.locked_mhz: int | None = None
        self.method: str | None = None
        self._old_handlers: dict = {}
        self._stopping = False

    def _on_signal(self, signum, frame):
        # One stop is enough: SLURM may signal the whole process tree and the job script forwards
        # the same signal, and a second raise must not cut the restore that the first one started.
        if self._stopping:
            return
        self._stopping = True
        raise Interrupted(signum)

    def __enter__(self) -> ClockGuard:
        for sig in HANDLED_SIGNALS:
            try:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: the caller handles signals
                break
        atexit.register(self.restore)
        return self

    def lock(self, mhz: int, mem_mhz: int | None = None) -> None:
        if self.control == "slurm":
            self._verify_site_clock(mhz)
            return
        write_atomic(self.record, json.dumps({"backend": self.backend.name, "gpu_uuid": self.backend.uuid(),
                                   "gpu_index": self.backend.index, "gpu_type": self.gpu_type, "pid": os.getpid(),
                                   "host": socket.gethostname(), "sm_clock_mhz": mhz, "mem_clock_mhz": mem_mhz,
                                   "control": self.control, "time": time.time()}))
        if self.control == "application":
            setter = getattr(self.backend, "set_application_clocks", None)
            if setter is None:
                raise InputError("--clock-control", "application", f"the {self.backend.name} backend cannot set "
                                 "application clocks; use --clock-control lock")
            setter(mhz, mem_mhz)
            self.method = "application"
        else:
            self.backend.lock_sm_clock(mhz, mem_mhz)
            self.method = self.backend.clock_method
        self.locked_mhz = mhz

    def _verify_site_clock(self, mhz: int) -> None:
        """``--clock-control slurm``: SLURM set the clock (application clocks, ``--gpu-freq``); read the
        setting back (the running SM clock where the backend cannot read the setting) and require it to
        be the run's clock within one step. Nothing is set, so nothing is recorded or restored."""
        # nvml/smi/dcgm: the application-clock setting; the simulated GPU: its application clock.
        reader = (getattr(self.backend, "applications_clock_mhz", None)
                  or getattr(self.backend, "application_sm_clock_mhz", None))
        setting = reader() if reader is not None else None
        observed = setting if setting is not None else self.backend.sample().sm_clock_mhz
        what = "application clock" if setting is not None else "SM clock"
        step = clock_step_mhz(self.backend.supported_sm_clocks_mhz(), mhz)
        if observed is None or abs(observed - mhz) > step:
            raise InputError("--clock-control", "slurm", f"the GPU's {what} is {observed} MHz, not this run's {mhz} MHz "
                             f"(to within {step} MHz): run this clock under `srun --gpu-freq={mhz}` (or sbatch "
                             "--gpu-freq), or use --clock-control lock")
        self.backend.clock_method = SLURM_VERIFIED
        self.locked_mhz = mhz
        self.method = SLURM_VERIFIED

    def switch(self, mhz: int | None) -> None:
        """Change the clock inside a run (per-phase clocks): the lock record is written once, not per
        switch, since any record is enough for a later launch to restore the GPU."""
        if self.control == "slurm":
            raise ClockError("--clock-control slurm: the site sets the clock; the launcher cannot switch it per phase")
        if mhz is None:
            self.backend.reset_clocks()
        elif self.record.exists():
            if self.control == "application":
                self.backend.set_application_clocks(mhz)
            else:
                self.backend.lock_sm_clock(mhz)
        else:
            self.lock(mhz)

    def restore(self) -> None:
        if self.control == "slurm":  # SLURM set the clock and resets it at the step's end
            self.locked_mhz = self.method = None
            return
        if self.record.exists() or self.locked_mhz is not None:
            self.backend.reset_clocks()
            self.record.unlink(missing_ok=True)
            self.locked_mhz = None
            self.method = None

    def __exit__(self, *exc) -> None:
        try:
            self.restore()
        finally:
            atexit.unregister(self.restore)
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)
