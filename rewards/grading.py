"""Hang- and crash-proof grading in a persistent worker process.

Why: math-verify bounds its own work with ``signal.alarm``, which only works in the main thread
and cannot interrupt C code that holds the GIL (sympy on a huge integer power, say); a crash in
sympy or a C extension would take the trainer down with it. One adversarial completion must
never stall or kill a training run, so grading happens in a child interpreter that the parent
can kill.

How: :class:`Grader` starts ``python -c ...`` (a fresh interpreter, like multiprocessing's
"spawn", but without re-importing the parent's ``__main__``, which for the CLI would pull in
torch) connected by a socket pair. A batch is one message; the worker sends back one score per
item as it finishes, so the parent knows exactly which item is in progress. If no score comes
within ``timeout`` seconds of the previous one (or the worker dies), that item scores 0.0, the
worker is killed, a new one is started and the rest of the batch continues there. Nothing but
the hanging item is lost and every item's wait is bounded by ``timeout`` (plus a restart).

The idle worker blocks in ``recv`` (no CPU). It exits when the parent closes the connection,
is killed with its parent (Linux ``PR_SET_PDEATHSIG``) and every live grader is closed at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0  # seconds a single item may take before it scores 0
_LIVE: weakref.WeakSet[Grader] = weakref.WeakSet()

_BOOT = (
    "import sys\n"
    "from multiprocessing.connection import Connection\n"
    "conn = Connection(int(sys.argv[1]))\n"
    "sys.path[:] = conn.recv()\n"
    "from eggroll_rl.rewards.grading import _serve\n"
    "_serve(conn, int(sys.argv[2]))\n"
)


class GraderStartupError(RuntimeError):
    """The worker could not start (e.g. the grading function cannot be imported there)."""


class Grader:
    """Scores items with ``fn(*item) -> float`` in a killable worker; see the module docstring.

    `fn` must be picklable by reference (a module-level function) and importable in a fresh
    interpreter (the worker gets the parent's ``sys.path``). An exception in `fn` scores 0.0.
    `init` (also module-level) runs once in each worker before it counts as started: imports
    done there are not charged to the first item's timeout.
    """

    def __init__(
        self,
        fn: Callable[..., float],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        init: Callable[[], None] | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        for f in (fn, init):
            try:
                pickle.dumps(f)
            except Exception as e:  # noqa: BLE001
                raise ValueError(
                    f"grading function {f!r} must be a module-level function ({e})"
                ) from None
        self.fn = fn
        self.timeout = float(timeout)
        self.init = init
        self.startup_timeout = startup_timeout
        self.restarts = 0  # workers killed for a hang or found dead (for logging/tests)
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        _LIVE.add(self)

    # -- public ----------------------------------------------------------------------------

    def map(self, items: Sequence[Sequence]) -> list[float]:
        """One score per item, in order. Hangs and crashes score 0.0; never raises for them."""
        items = [tuple(it) for it in items]
        scores = [0.0] * len(items)
        with self._lock:
            i = 0
            while i < len(items):
                conn = self._ensure_started()
                try:
                    conn.send(items[i:])
                except OSError:  # died while idle: start another, resend
                    self._kill()
                    continue
                while i < len(items):
                    if conn.poll(self.timeout):
                        try:
                            scores[i] = conn.recv()
                            i += 1
                            continue
                        except (EOFError, OSError):
                            why = "crashed the grader"
                    else:
                        why = f"took more than {self.timeout:g}s"
                    log.warning("grading item %d %s; scored 0: %.200r", i, why, items[i])
                    self._kill()
                    i += 1
                    break
        return scores

    def close(self) -> None:
        """Stop the worker (it restarts on the next :meth:`map`)."""
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.send(None)
                    self._proc.wait(timeout=2)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self._kill(count=False)

    @property
    def pid(self) -> int | None:
        """The worker's process id, None when none is running."""
        return self._proc.pid if self._proc is not None else None

    # -- internals -------------------------------------------------------------------------

    def _ensure_started(self) -> Connection:
        if self._proc is not None and self._proc.poll() is None:
            return self._conn
        if self._proc is not None:
            self._kill()
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send([os.path.abspath(p) if p == "" else p for p in sys.path])
        self._conn.send((self.fn, self.init))
        try:
            reply = self._conn.recv() if self._conn.poll(self.startup_timeout) else "timed out"
        except (EOFError, OSError):
            reply = "it exited (its error is on stderr)"
        if reply != "ready":
            self._kill(count=False)
            raise GraderStartupError(f"grading worker did not start: {reply}")
        return self._conn

    def _kill(self, count: bool = True) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self.restarts += count
        self._proc = self._conn = None


def _serve(conn: Connection, parent_pid: int) -> None:
    """The worker loop: receive a batch, send one score per item as it completes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    _die_with_parent(parent_pid)
    try:
        fn, init = conn.recv()
        if init is not None:
            init()
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(f"{type(e).__name__}: {e}")
        return
    conn.send("ready")
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        for item in batch:
            try:
                score = float(fn(*item))
            except Exception:  # noqa: BLE001 - an ungradable item is a wrong one
                score = 0.0
            conn.send(score)


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(0)


@atexit.register
def _close_all() -> None:
    for grader in list(_LIVE):
        grader.close()

