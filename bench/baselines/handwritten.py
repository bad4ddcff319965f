"""The hand-written server: what a user would otherwise write to serve a scikit-learn model.

FastAPI + uvicorn, a pydantic request model, one ``predict_proba`` per request. The harness runs
it as ``uvicorn handwritten:app --workers N --http httptools --loop uvloop --no-access-log``,
with ``BENCH_MODEL_PATH`` naming the joblib file and ``BENCH_READY_DIR`` a folder where each
worker leaves a file named by its pid once it serves.

The handler is an ``async def`` by default (``BENCH_HANDLER=sync`` picks a plain ``def``; so
does ``bench/run.py --handwritten-handler sync``). Both were measured on W1 at 64 clients (wrk,
2 workers, a 2-core machine, 6 interleaved 2 s runs each): ``async def`` made 8,200-8,900 req/s
with a p99 of 12-33 ms, ``def`` 2,800-5,700 req/s with a p99 of 58-224 ms. A ``def`` handler
runs in anyio's thread pool: a thread hand-off per request and a GIL contended with the event
loop, for a model call of well under a millisecond. So the baseline is ``async def``, the
faster. (On W2, a ~3 ms call, the two were within noise in req/s, but ``async def`` had the
longer p99 tail, as each request waits behind the ones ahead of it on the blocked loop.)
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

MODEL: Any = joblib.load(os.environ["BENCH_MODEL_PATH"])
HANDLER = os.environ.get("BENCH_HANDLER", "async")


class PredictRequest(BaseModel):
    instances: list[list[float]]


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    ready_dir = os.environ.get("BENCH_READY_DIR")
    if ready_dir:
        (Path(ready_dir) / str(os.getpid())).touch()
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/ping")
async def ping() -> dict[str, str]:
    return {"status": "ok"}


if HANDLER == "sync":

    @app.post("/invocations")
    def invocations_sync(request: PredictRequest) -> dict[str, Any]:
        proba = MODEL.predict_proba(np.asarray(request.instances, dtype=np.float64))
        return {"predictions": proba.tolist()}

elif HANDLER == "async":

    @app.post("/invocations")
    async def invocations_async(request: PredictRequest) -> dict[str, Any]:
        proba = MODEL.predict_proba(np.asarray(request.instances, dtype=np.float64))
        return {"predictions": proba.tolist()}

else:
    raise SystemExit(f"BENCH_HANDLER must be sync or async, not {HANDLER!r}")
