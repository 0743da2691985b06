"""One long-running sampler process (``nvidia-smi -lms``, ``dcgmi dmon``) read by a thread.

Why a stream: starting ``nvidia-smi`` once per sample costs tens of milliseconds of CPU and
driver set-up each time, so at a 50 ms sampling interval the sampler fell behind and its own
load disturbed the host it measured. One process that prints a line per interval costs neither.

What the stream guarantees:

* ``latest()`` returns the newest parsed line and when it arrived (``time.monotonic()``); the
  backends return it as the reading at the time they are asked (sample-and-hold), so a window's
  end always lies between two readings. The value is at most one stream interval old.
* A process that ended (the tool crashed, the driver restarted it, a fake that prints one line)
  is started again at the next ``latest()``, which then waits for a fresh line: a reading is
  never held across a gap. No fresh line in ``timeout_s`` is a ``GpuError`` quoting what the
  tool printed. A live process that stopped printing for ``stale_after_s`` is an error too.
* ``close()`` ends the process (SIGTERM, then SIGKILL) and joins the reader thread. Should the
  launcher itself be killed, the tool's next write hits a pipe without a reader and SIGPIPE ends
  it within one interval, so no sampler is left behind. The process has its own session so a
  terminal's Ctrl-C reaches the launcher only, which keeps sampling while it restores clocks.
"""

from __future__ import annotations

import collections
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from ..errors import GpuError

T = TypeVar("T")
MESSAGES_KEPT = 8  # lines that did not parse, kept to explain a failure


class LineStream(Generic[T]):
    """``argv``'s stdout (and stderr) line by line through ``parse``; the newest non-None result is kept."""

    def __init__(self, argv: Sequence[str], parse: Callable[[str], T | None], what: str,
                 timeout_s: float = 10.0, stale_after_s: float = 5.0):
        self.argv = list(argv)
        self.parse = parse
        self.what = what
        self.timeout_s = timeout_s
        self.stale_after_s = stale_after_s
        self.starts = 0                      # processes started so far (1 while nothing went wrong)
        self.messages: collections.deque[str] = collections.deque(maxlen=MESSAGES_KEPT)
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._latest: tuple[T, float] | None = None
        self._seq = 0                        # readings parsed since the first start
        self._ended = True
        self._start_lock = threading.Lock()  # one restart at a time, whichever thread notices

    # ------------------------------------------------------------------ process
    def start(self) -> None:
        """Start the process (again); the previous one, if any, is ended first."""
        self._stop_process()
        try:
            proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    text=True, bufsize=1, start_new_session=True)
        except OSError as exc:
            raise GpuError(f"{self.what}: cannot start {self.argv[0]} ({exc.strerror or exc})") from None
        with self._cond:
            self._proc, self._ended = proc, False
        self.starts += 1
        self._thread = threading.Thread(target=self._read, args=(proc,), name=f"stream-{self.what}", daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            value = self.parse(line)
            with self._cond:
                if value is None:
                    if line.strip():
                        self.messages.append(line.strip())
                    continue
                self._latest = (value, time.monotonic())
                self._seq += 1
                self._cond.notify_all()
        proc.wait()
        with self._cond:
            if self._proc is proc:
                self._ended = True
            self._cond.notify_all()

    def _stop_process(self) -> None:
        proc, thread = self._proc, self._thread
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)

    @property
    def running(self) -> bool:
        return self._proc is not None and not self._ended

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    # ------------------------------------------------------------------ readings
    def wait_for_reading(self, after: int | None = None, timeout_s: float | None = None) -> bool:
        """Wait until a reading newer than number ``after`` (default: any) arrived; False when the
        process ended first or the time ran out."""
        after = -1 if after is None else after
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        with self._cond:
            while self._seq <= after or self._latest is None:
                if self._ended:
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def peek(self) -> T | None:
        """The newest reading as it is, without starting anything (None before the first)."""
        with self._cond:
            return self._latest[0] if self._latest is not None else None

    def latest(self) -> tuple[T, float]:
        """The newest reading and its arrival time; (re)starts the process where it is not running."""
        with self._start_lock:
            if not self.running:
                seen = self._seq
                self.start()
                if not self.wait_for_reading(after=seen):
                    raise GpuError(self._no_reading())
        with self._cond:
            value, at = self._latest  # type: ignore[misc]  # wait_for_reading or an earlier call set it
        age = time.monotonic() - at
        if age > self.stale_after_s:
            raise GpuError(f"{self.what}: no new reading for {age:.1f} s although {self.argv[0]} is running "
                           f"(a hung driver call?){self._said()}")
        return value, at

    def _said(self) -> str:
        return f"; it said: {' | '.join(self.messages)}" if self.messages else ""

    def _no_reading(self) -> str:
        code = self.returncode
        how = f"exited with code {code}" if code is not None else f"gave no reading in {self.timeout_s:g} s"
        return f"{self.what}: {self.argv[0]} {how}{self._said()}"

    def close(self) -> None:
        with self._start_lock:
            self._stop_process()
            with self._cond:
                self._ended = True
