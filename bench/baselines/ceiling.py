"""The HTTP ceiling: a bare ASGI app that answers every request with a fixed small JSON body.

Nothing can serve a model over HTTP faster than this serves nothing, with the same uvicorn
settings and worker count. ``BENCH_READY_DIR``: as for ``handwritten.py``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Message = MutableMapping[str, Any]

BODY = b'{"predictions":[[0.5,0.5]]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                ready_dir = os.environ.get("BENCH_READY_DIR")
                if ready_dir:
                    (Path(ready_dir) / str(os.getpid())).touch()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more_body = True
    while more_body:  # read the request body, as any real server would
        message = await receive()
        more_body = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
