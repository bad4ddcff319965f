"""Typed settings, built once at start-up and passed down (nothing here reads the environment at
import time)."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = ".modelyard"
DEFAULT_API_PORT = 8700
DEFAULT_GATEWAY_PORT = 8701
TOKEN_FILE = "token"
INVOKE_TOKEN_FILE = "invoke-token"
SERVER_FILE = "server.json"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What ``modelyard server`` runs with; every process of the server gets the same values."""

    state_dir: Path
    store_url: str
    host: str = "127.0.0.1"
    api_port: int = DEFAULT_API_PORT
    gateway_port: int = DEFAULT_GATEWAY_PORT
    gateway_workers: int = 1
    require_invoke_token: bool = False
    invocation_timeout_s: float = 60.0
    max_payload_bytes: int = 25 * 1024 * 1024
    reconcile_interval_s: float = 0.5
    route_sync_interval_s: float = 0.25
    #: how often the async dispatcher looks for new requests (the gateway's inbox) and free slots
    async_poll_interval_s: float = 0.1
    #: how long finished async requests stay queryable (their result files stay regardless)
    async_retention_s: float = 7 * 24 * 3600.0
    #: serverless endpoints' payload limit
    serverless_max_payload_bytes: int = 4 * 1024 * 1024
    #: async endpoints' payload limit (streamed, never held in memory)
    async_max_payload_bytes: int = 1024 * 1024 * 1024
    #: metrics kept at 10 s resolution this long, then rolled up to 1 min points
    metrics_retention_s: float = 24 * 3600.0
    #: the 1 min points are kept this long
    metrics_rollup_retention_s: float = 14 * 24 * 3600.0
    #: how often the autoscaler decides, and the seconds of metrics target tracking averages
    autoscale_interval_s: float = 10.0
    autoscale_window_s: float = 60.0
    drain_delay_s: float = 1.5
    stop_grace_s: float = 30.0
    restart_backoff_s: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0)
    max_start_attempts: int = 3

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "artifacts"

    def to_json(self) -> str:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["state_dir"] = str(self.state_dir)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ServerSettings:
        data = json.loads(text)
        data["state_dir"] = Path(data["state_dir"])
        data["restart_backoff_s"] = tuple(data["restart_backoff_s"])
        return cls(**data)


def default_store_url(state_dir: Path) -> str:
    return f"sqlite:///{(state_dir / 'modelyard.db').resolve()}"


def ensure_token(state_dir: Path, name: str = TOKEN_FILE) -> str:
    """A token (the control plane's, or the invoke token): generated on first start, stored with
    mode 0600 in the state directory, where the CLI and SDK read it."""
    path = state_dir / name
    if path.exists():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def ensure_invoke_token(state_dir: Path) -> str:
    return ensure_token(state_dir, INVOKE_TOKEN_FILE)


def read_token(state_dir: Path, name: str = TOKEN_FILE) -> str | None:
    path = state_dir / name
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
