"""One owner per GPU and per results directory: exclusive locks that a dead holder releases.

Two sweeps on one GPU measure each other's power and fight over its clock (each records the
other's work as its own, ``ok``); two launchers on one results directory interleave rows and share
events files. So a launcher holds, for as long as it runs, an ``flock`` on a lock file per GPU
(by UUID, in a host-wide directory, so other users' sweeps are seen too) and one in the results
directory. The kernel drops an ``flock`` when its holder dies, however it dies (SIGKILL included):
a lock can never be left behind. The file holds who has it (pid, user, host, output directory,
since when), so a refusal can say who to ask.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from sd_energy_contract import env

# Host-wide, so every user's sweeps (and every SLURM job's) meet here: not /tmp, which SLURM's
# job_container/tmpfs makes private to each job (see profiling.clocks.lock_dir for the same choice).
DEFAULT_OWNER_DIR = Path("/var/tmp/sd-energy-owners")
POLL_S = 0.5


class Held(Exception):  # noqa: N818 - names the state, like Interrupted
    """Another live process holds the lock; ``holder`` is what it wrote (may be empty)."""

    def __init__(self, what: str, holder: dict):
        self.what, self.holder = what, holder
        super().__init__(f"{what} is in use by {describe(holder)}")


def owner_dir() -> Path:
    """Where GPU locks live: ``$SD_ENERGY_LOCK_DIR/owners`` when set (tests, sites), else a
    world-writable directory in /var/tmp (sticky, like /var/tmp itself)."""
    base = os.environ.get(env.LOCK_DIR)
    path = Path(base) / "owners" if base else DEFAULT_OWNER_DIR
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True)
        if not base:
            os.chmod(path, 0o1777)
    return path


def describe(holder: dict) -> str:
    if not holder:
        return "another process (it has not said who yet)"
    parts = [f"pid {holder.get('pid')}", f"user {holder.get('user')}"]
    if holder.get("host") and holder.get("host") != socket.gethostname():
        parts.append(f"host {holder['host']}")
    if holder.get("output_dir"):
        parts.append(f"output {holder['output_dir']}")
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    return ", ".join(parts)


class OwnerLock:
    """An exclusive ``flock`` on ``path``, with the holder's description written into the file."""

    def __init__(self, path: Path, what: str, info: dict):
        self.path, self.what, self.info = Path(path), what, info
        self._fd: int | None = None

    def acquire(self, wait_s: float = 0.0, on_wait=None) -> OwnerLock:
        """Take the lock, waiting up to ``wait_s`` seconds for the holder to finish; raises ``Held``."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        with contextlib.suppress(PermissionError):  # someone else's file: they made it writable already
            os.fchmod(fd, 0o666)  # another user may hold it next and must be able to say so in the file
        deadline = time.monotonic() + max(0.0, wait_s)
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise Held(self.what, holder) from None
                if on_wait is not None and not told:
                    on_wait(f"waiting for {self.what}: in use by {describe(_read_holder(fd))}")
                    told = True
                time.sleep(POLL_S)
        record = {**self.info, "pid": os.getpid(), "user": _user(), "host": socket.gethostname(),
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # nobody holds it: a later reader must not name us
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OwnerLock:
        """``with gpu_lock(...) as lock:`` takes it (without waiting); an ``acquire``d lock is released
        with ``release``: a second ``flock`` from this process on a new descriptor would conflict."""
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def gpu_lock(uuid: str, info: dict) -> OwnerLock:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in uuid)
    return OwnerLock(owner_dir() / f"gpu-{safe}.lock", f"GPU {uuid}", info)


def results_lock(out_dir: Path, info: dict) -> OwnerLock:
    return OwnerLock(Path(out_dir) / ".owner.lock", f"results directory {out_dir}", info)


def gpu_holder(uuid: str) -> dict | None:
    """Who holds the GPU now (None when nobody does): for ``--reset-clocks``, which must not reset a
    clock a live sweep set."""
    try:
        lock = gpu_lock(uuid, {}).acquire()
    except Held as exc:
        return exc.holder or {"pid": "?"}
    lock.release()
    return None


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
