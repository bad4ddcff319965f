"""The gateway process, started by ``modelyard server`` on a socket the supervisor holds."""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn

from modelyard.dataplane.gateway import Gateway
from modelyard.process import absorb_reraised_signals, child_start, watch_parent
from modelyard.settings import INVOKE_TOKEN_FILE, read_token


def main() -> None:
    fd, settings, token = child_start("modelyard-gateway", logging.WARNING)
    invoke_token = None
    if settings.require_invoke_token:
        invoke_token = read_token(settings.state_dir, INVOKE_TOKEN_FILE)
    gateway = Gateway(
        control_url=f"http://{settings.host}:{settings.api_port}",
        token=token,
        invoke_token=invoke_token,
        routes_file=settings.run_dir / "routes.json",
        max_payload_bytes=settings.max_payload_bytes,
        timeout_s=settings.invocation_timeout_s,
        sync_interval_s=settings.route_sync_interval_s,
    )
    threading.Thread(target=watch_parent, args=(threading.Event(),), daemon=True).start()
    config = uvicorn.Config(
        gateway,
        log_level="warning",
        access_log=False,
        lifespan="on",
        http="httptools",
        loop="uvloop",
        timeout_keep_alive=30,
    )
    absorb_reraised_signals()
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


if __name__ == "__main__":
    main()
