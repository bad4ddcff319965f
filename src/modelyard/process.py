"""Process plumbing shared by the server's processes (control plane, gateway)."""

from __future__ import annotations

import logging
import os
import signal
import threading


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
