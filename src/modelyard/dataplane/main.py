"""The gateway process, started by ``modelyard server`` on a socket the supervisor holds."""

from __future__ import annotations

import logging
import socket
import threading

from modelyard import inbox
from modelyard.dataplane import http
from modelyard.dataplane.gateway import Gateway
from modelyard.process import child_start, watch_parent
from modelyard.settings import INVOKE_TOKEN_FILE, read_token

#: Seconds the gateway waits for requests in progress when it is asked to stop.
SHUTDOWN_GRACE_S = 10.0


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
        inbox_dir=inbox.inbox_dir(settings.run_dir),
        serverless_max_payload_bytes=settings.serverless_max_payload_bytes,
        async_max_payload_bytes=settings.async_max_payload_bytes,
        workers=settings.gateway_workers,
    )
    threading.Thread(target=watch_parent, args=(threading.Event(),), daemon=True).start()
    listening = socket.socket(fileno=fd)

    async def serve() -> None:
        server = http.HttpServer(
            gateway,
            max_body=settings.max_payload_bytes,
            errors=gateway.error,
            keepalive_s=30,
            streaming=gateway.streaming,
        )
        await gateway.startup()
        try:
            await server.listen(sock=listening)
            await http.serve_until_signalled(server, grace_s=SHUTDOWN_GRACE_S)
        finally:
            await gateway.shutdown()

    http.run(serve)


if __name__ == "__main__":
    main()
