"""Child processes that cannot outlive the harness, polling, and peak-RSS sampling."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

import psutil

T = TypeVar("T")


class HarnessError(Exception):
    """Something the harness needs did not work (a server did not start, a tool failed)."""


def wait_until(
    check: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.05
) -> T:
    """Poll ``check`` until it returns something other than None (or False); HarnessError after
    ``timeout_s``. ``check`` may raise HarnessError to give up at once."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        try:
            value = check()
            if value is not None and value is not False:
                return value
        except HarnessError:
            raise
        except Exception as exc:  # the thing polled may not be up yet
            last = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last})" if last else ""
            raise HarnessError(f"timed out after {timeout_s:g} s waiting for {what}{detail}")
        time.sleep(interval_s)  # polling interval


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _pdeathsig() -> Callable[[], None] | None:
    """On Linux, a preexec function that makes the child get SIGTERM when the harness dies, even
    by SIGKILL (every server here stops its own children on SIGTERM)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up now, not in the forked child
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigterm)

    return preexec


_PREEXEC = _pdeathsig()


class Child:
    """A child process in a session of its own (so a Ctrl-C in the terminal reaches only the
    harness, which then stops its children in order), with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = None,
        die_with_parent: bool = True,
    ) -> None:
        """``die_with_parent``: SIGTERM it when the harness dies, even by SIGKILL (Linux). A
        short-lived child started while other threads run (wrk, under the RSS sampler) passes
        False: it ends by itself, and no Python code then runs between fork and exec."""
        self.name = name
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=self._log if stdout is None else stdout,
            stderr=self._log,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_PREEXEC if die_with_parent else None,
        )
        self._root = psutil.Process(self.proc.pid)
        self._seen: dict[int, psutil.Process] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def check_running(self) -> None:
        """HarnessError, with the log's tail, if the process has exited."""
        if self.proc.poll() is not None:
            raise HarnessError(
                f"{self.name} exited with status {self.proc.returncode}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def tree(self) -> list[psutil.Process]:
        """The process and all its descendants now (remembered, so stop() can reap them)."""
        try:
            found = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return []
        for proc in found[1:]:
            self._seen.setdefault(proc.pid, proc)
        return found

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            self._log.flush()
            text = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:]) or "(empty)"
        return "(no log)"

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM) and return at once; :meth:`stop` waits."""
        self.tree()  # remember its descendants, to reap any it leaves behind
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the process and let it stop its own children; SIGKILL whatever of the tree is
        left after ``timeout_s``. Idempotent."""
        self.terminate()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
        leftovers = [p for p in self._seen.values() if _alive(p)]
        if leftovers:  # its children get a moment to follow it out, then are killed
            _, alive = psutil.wait_procs(leftovers, timeout=min(timeout_s, 5.0))
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            psutil.wait_procs(alive, timeout=5.0)
        if not self._log.closed:
            self._log.close()


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class PeakRss:
    """Samples the summed RSS of some processes every ``interval_s`` in a background thread
    while in the ``with`` block; ``peak_mb`` is the largest sum seen.

    ``processes`` is called at each sample (so processes that come and go are counted)."""

    def __init__(
        self, processes: Callable[[], Iterable[psutil.Process]], interval_s: float = 0.2
    ) -> None:
        self._processes = processes
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self.peak_bytes = 0

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / (1024 * 1024)

    def sample(self) -> None:
        total = 0
        for proc in self._processes():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        self.peak_bytes = max(self.peak_bytes, total)

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self._interval_s):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
