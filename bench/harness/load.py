"""Load generators: wrk (a C program, preferred) and the Python one in ``harness.pyload``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from harness.common import REPO_ROOT, WRK_SCRIPT, child_env
from harness.procs import Child, HarnessError

REQUEST_TIMEOUT_S = 10.0
ERROR_KINDS = ("connect", "read", "write", "status", "timeout")


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadResult:
        errors = {kind: int(data["errors"].get(kind, 0)) for kind in ERROR_KINDS}
        return cls(
            requests=int(data["requests"]),
            duration_s=float(data["duration_s"]),
            p50_ms=float(data["p50_ms"]),
            p99_ms=float(data["p99_ms"]),
            errors=errors,
        )


class Generator(Protocol):
    name: str  # "wrk" or "python"
    description: str  # with its version, for the machine description

    def run(self, url: str, body_file: Path, concurrency: int, duration_s: float) -> LoadResult:
        """``concurrency`` keep-alive clients POSTing ``body_file`` to ``url`` for the duration."""
        ...

    def close(self) -> None: ...


def wrk_path() -> str | None:
    return shutil.which("wrk")


class WrkGenerator:
    """``wrk -t1 -c C -d D --timeout 10s`` with ``post.lua``; whole seconds only."""

    name = "wrk"

    def __init__(self, log_dir: Path) -> None:
        path = wrk_path()
        if path is None:
            raise HarnessError("wrk is not installed (make wrk-bin, or --generator python)")
        self.path = path
        self.log_dir = log_dir
        self.runs = 0
        version = subprocess.run(
            [path, "-v"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        found = re.search(r"wrk\s+(\S+)", version)
        self.description = f"wrk {found.group(1) if found else '(unknown version)'} (-t1)"

    def run(self, url: str, body_file: Path, concurrency: int, duration_s: float) -> LoadResult:
        if duration_s != int(duration_s) or duration_s < 1:
            raise HarnessError(f"wrk runs for whole seconds only, not {duration_s:g} s")
        self.runs += 1
        argv = [
            self.path,
            "-t1",
            f"-c{concurrency}",
            f"-d{int(duration_s)}s",
            "--timeout",
            f"{REQUEST_TIMEOUT_S:g}s",
            "-s",
            str(WRK_SCRIPT),
            url,
        ]
        env = {**os.environ, "BENCH_BODY_FILE": str(body_file)}
        log_path = self.log_dir / f"wrk-{self.runs}.log"
        child = Child("wrk", argv, log_path=log_path, env=env, die_with_parent=False)
        try:
            child.proc.wait(timeout=duration_s + REQUEST_TIMEOUT_S + 30)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"wrk did not finish; see {child.log_path}") from exc
        finally:
            child.stop()
        output = child.log_path.read_text(errors="replace")
        for line in output.splitlines():
            if line.startswith("BENCH_RESULT "):
                return LoadResult.from_json(json.loads(line.removeprefix("BENCH_RESULT ")))
        raise HarnessError(
            f"wrk exited with status {child.proc.returncode} and no result:\n{output[-2000:]}"
        )

    def close(self) -> None:
        pass


class PythonGenerator:
    """The ``harness.pyload`` child process (asyncio + aiohttp), started once and reused."""

    name = "python"

    def __init__(self, log_dir: Path) -> None:
        import aiohttp

        self.description = f"python (asyncio + aiohttp {aiohttp.__version__}, separate process)"
        self.child = Child(
            "python load generator",
            [sys.executable, "-m", "harness.pyload"],
            log_path=log_dir / "pyload.log",
            env=child_env(),
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def run(self, url: str, body_file: Path, concurrency: int, duration_s: float) -> LoadResult:
        proc = self.child.proc
        assert proc.stdin is not None and proc.stdout is not None
        self.child.check_running()
        command = {
            "url": url,
            "body_file": str(body_file),
            "concurrency": concurrency,
            "duration_s": duration_s,
            "timeout_s": REQUEST_TIMEOUT_S,
        }
        try:
            proc.stdin.write((json.dumps(command) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            self.child.check_running()
            raise
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=duration_s + REQUEST_TIMEOUT_S + 30):
                raise HarnessError(
                    f"the python load generator did not answer; see {self.child.log_path}"
                )
        line = proc.stdout.readline()
        if not line:
            self.child.check_running()
            raise HarnessError(
                f"the python load generator closed its output; see {self.child.log_path}"
            )
        return LoadResult.from_json(json.loads(line))

    def close(self) -> None:
        if self.child.proc.stdin is not None and not self.child.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.child.proc.stdin.close()  # end of input: it exits by itself
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.child.proc.wait(timeout=5)
        self.child.stop()
        if self.child.proc.stdout is not None:
            self.child.proc.stdout.close()
