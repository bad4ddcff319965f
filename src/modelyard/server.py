"""``modelyard server``: a small supervisor that runs the control plane and the gateway (one or
more worker processes) as separate processes on sockets it holds, restarts any that dies, and
stops them cleanly on Ctrl-C / SIGTERM.

Holding the listening sockets here means a restarted child comes back on the same port, and a
request that arrives in between waits in the socket's backlog instead of being refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

from modelyard.errors import UserError
from modelyard.settings import SERVER_FILE, ServerSettings, ensure_invoke_token, ensure_token


@dataclass
class Child:
    name: str
    module: str
    sock: socket.socket
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] | None = None


def _bind(host: str, port: int, what: str, flag: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(
            f"cannot listen for the {what} on {host}:{port} ({exc.strerror}); "
            f"pick another port with {flag}"
        ) from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, settings: ServerSettings, echo: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.echo = echo
        self.stopping = False
        self.children: list[Child] = []

    def _spawn(self, child: Child, settings_json: str) -> None:
        fd = child.sock.fileno()
        env = {**os.environ, "MODELYARD_SETTINGS": settings_json}
        child.proc = subprocess.Popen(
            [sys.executable, "-m", child.module, "--fd", str(fd)],
            pass_fds=(fd,),
            env=env,
            stdin=subprocess.DEVNULL,
        )

    def run(self) -> int:
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_state_dir(s.state_dir)
        for folder in (s.logs_dir, s.run_dir, s.cache_dir):
            folder.mkdir(parents=True, exist_ok=True)
        ensure_token(s.state_dir)
        if s.require_invoke_token:
            ensure_invoke_token(s.state_dir)
        api = _bind(s.host, s.api_port, "control-plane API", "--port")
        gateway = _bind(s.host, s.gateway_port, "gateway", "--gateway-port")
        api_port, gw_port = api.getsockname()[1], gateway.getsockname()[1]
        resolved = ServerSettings(**{**_fields(s), "api_port": api_port, "gateway_port": gw_port})
        settings_json = resolved.to_json()
        api_url, gw_url = f"http://{s.host}:{api_port}", f"http://{s.host}:{gw_port}"
        server_file = s.state_dir / SERVER_FILE
        server_file.write_text(
            json.dumps({"api_url": api_url, "gateway_url": gw_url, "pid": os.getpid()})
        )
        workers = s.gateway_workers
        self.children = [
            Child("control plane", "modelyard.controlplane.main", api, restarts=[]),
            *(
                Child(
                    "gateway" if workers == 1 else f"gateway worker {i + 1}",
                    "modelyard.dataplane.main",
                    gateway,  # the workers share the socket; the kernel spreads connections
                    restarts=[],
                )
                for i in range(workers)
            ),
        ]

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        for child in self.children:
            self._spawn(child, settings_json)
        self.echo(f"Modelyard control plane: {api_url}  (API docs: {api_url}/docs)")
        self.echo(f"Modelyard gateway:       {gw_url}/endpoints/<name>/invocations")
        self.echo(f"State: {s.state_dir}   Token: {s.state_dir / 'token'}   Ctrl-C stops.")
        code = self._watch(settings_json)
        self._stop_children()
        with contextlib.suppress(OSError):
            server_file.unlink()
        for sock in {id(c.sock): c.sock for c in self.children}.values():
            sock.close()
        return code

    def _watch(self, settings_json: str) -> int:
        while not self.stopping:
            for child in self.children:
                assert child.proc is not None and child.restarts is not None
                code = child.proc.poll()
                if code is None:
                    continue
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < 60] + [now]
                if len(child.restarts) > 5:
                    self.echo(f"The {child.name} keeps exiting (status {code}); stopping.")
                    return 1
                self.echo(f"The {child.name} exited with status {code}; restarting it.")
                self._spawn(child, settings_json)
            time.sleep(0.2)  # supervision poll interval, not synchronisation
        return 0

    def _stop_children(self) -> None:
        # The gateway workers first, all at once (no new requests anywhere), then the control
        # plane, which drains the replicas.
        gateways = [c for c in self.children if c.module == "modelyard.dataplane.main"]
        others = [c for c in self.children if c not in gateways]
        for group in (gateways, list(reversed(others))):
            live = [c.proc for c in group if c.proc is not None and c.proc.poll() is None]
            for proc in live:
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.settings.stop_grace_s + 10
            for proc in live:
                try:
                    proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _lock_state_dir(state_dir: Path) -> IO[str]:
    """One server per state directory: a second one would fight the first over its replicas."""
    handle = open(state_dir / "server.lock", "a+")  # noqa: SIM115 - held for the server's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise UserError(
            f"another modelyard server is running with the state directory {state_dir}; "
            "stop it first or pass a different --state-dir"
        ) from exc
    return handle


def _fields(settings: ServerSettings) -> dict[str, object]:
    return {k: getattr(settings, k) for k in settings.__dataclass_fields__}
