"""Process plumbing shared by the server's processes (control plane, gateway)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from modelyard.settings import ServerSettings, read_token


def watch_parent(stop: threading.Event) -> None:
    """Exit with the supervisor: if it dies, so do we (replicas are drained on the way out)."""
    parent = os.getppid()
    while not stop.wait(1.0):
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def quiet_logging(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def absorb_reraised_signals() -> None:
    """uvicorn re-raises the SIGTERM/SIGINT it handled once it has stopped; absorb it so the
    clean-up after ``server.run`` (draining replicas) runs instead of the default handler."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)


def child_start(prog: str, log_level: int) -> tuple[int, ServerSettings, str]:
    """What every server child starts from: the inherited socket's fd (``--fd``), the settings
    the supervisor passed in ``MODELYARD_SETTINGS``, and the control-plane token."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--fd", type=int, required=True, help="inherited listening socket")
    args = parser.parse_args()
    quiet_logging(log_level)
    settings = ServerSettings.from_json(os.environ["MODELYARD_SETTINGS"])
    token = read_token(settings.state_dir)
    if not token:
        raise SystemExit(
            f"{prog}: no token in {settings.state_dir}; start it with `modelyard server`"
        )
    return args.fd, settings, token
