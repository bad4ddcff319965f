"""The gateway process. Started by ``server``; also runs alone from a saved routing table."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading

import uvicorn

from modelyard.dataplane.gateway import Gateway
from modelyard.process import absorb_reraised_signals, quiet_logging, watch_parent
from modelyard.server import INVOKE_TOKEN_FILE
from modelyard.settings import ServerSettings, read_token


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="modelyard-gateway")
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    quiet_logging(logging.WARNING)
    settings = ServerSettings.from_json(os.environ["MODELYARD_SETTINGS"])
    token = read_token(settings.state_dir)
    assert token
    invoke_token = None
    if settings.require_invoke_token:
        invoke_token = (settings.state_dir / INVOKE_TOKEN_FILE).read_text().strip()
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
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=args.fd)])


if __name__ == "__main__":
    main()
