"""Clock control that always puts the GPU back: lock records, atexit, and signal handlers.

Before a clock is locked, a lock record (JSON: backend, GPU, pid, host) is written. It is
removed only after the clocks are reset. So every exit path is covered:

* normal exit and exceptions: ``ClockGuard.__exit__`` / ``atexit`` reset the clocks;
* SIGINT, SIGTERM, SIGUSR1 (SLURM's warning before the time limit), SIGHUP: turned into
  ``Interrupted``, which unwinds through the same path;
* SIGKILL (nothing runs): the record stays, and the next launch (or ``--reset-clocks``)
  finds it, sees its process is gone, and resets those clocks before doing anything else.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path

from sd_energy_contract import env
from sd_energy_contract.files import write_atomic

from .backends.base import GpuBackend

LOCK_DIR_ENV = env.LOCK_DIR
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)


class Interrupted(BaseException):  # noqa: N818 - a control-flow signal, like KeyboardInterrupt
    """A signal asked the sweep to stop; clocks are restored while this unwinds."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def lock_dir() -> Path:
    default = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"sd-energy-locks-{os.getuid()}"
    return Path(os.environ.get(LOCK_DIR_ENV) or default)


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
    for path in sorted(lock_dir().glob("*.json")):
        try:
            rec = json.loads(path.read_text())
            pid = int(rec.get("pid", -1))
            host = rec.get("host")
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            out.append({"path": str(path), "unreadable": f"not a lock record ({type(exc).__name__})"})
            continue
        if host == socket.gethostname() and not _pid_alive(pid):
            out.append({**rec, "path": str(path)})
    return out


def restore_stale(open_backend_fn, log=print) -> list[dict]:
    """Reset the clocks of every GPU a dead launcher left locked; returns what it restored.

    A record that cannot be restored (garbage, an unknown backend, a GPU this job cannot see) is
    reported in one line and moved aside (``<name>.bad``): it must never block every later launch.
    """
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


class ClockGuard:
    """Lock clocks inside a ``with`` block; reset them on every way out."""

    def __init__(self, backend: GpuBackend, gpu_type: str | None = None):
        self.backend = backend
        self.gpu_type = gpu_type
        self.record = _record_path(backend)
        self.locked_mhz: int | None = None
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
        write_atomic(self.record, json.dumps({"backend": self.backend.name, "gpu_uuid": self.backend.uuid(),
                                   "gpu_index": self.backend.index, "gpu_type": self.gpu_type, "pid": os.getpid(),
                                   "host": socket.gethostname(), "sm_clock_mhz": mhz, "mem_clock_mhz": mem_mhz,
                                   "time": time.time()}))
        self.backend.lock_sm_clock(mhz, mem_mhz)
        self.locked_mhz = mhz

    def switch(self, mhz: int | None) -> None:
        """Change the clock inside a run (per-phase clocks): the lock record is written once, not per
        switch, since any record is enough for a later launch to restore the GPU."""
        if mhz is None:
            self.backend.reset_clocks()
        elif self.record.exists():
            self.backend.lock_sm_clock(mhz)
        else:
            self.lock(mhz)

    def restore(self) -> None:
        if self.record.exists() or self.locked_mhz is not None:
            self.backend.reset_clocks()
            self.record.unlink(missing_ok=True)
            self.locked_mhz = None

    def __exit__(self, *exc) -> None:
        try:
            self.restore()
        finally:
            atexit.unregister(self.restore)
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)
