"""The control-plane HTTP app (FastAPI: fine for the control plane, never on the request path)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelyard import __version__
from modelyard.controlplane import metrics
from modelyard.controlplane.deps import Context, context
from modelyard.controlplane.routers import alarms, deployments, internal, resources
from modelyard.errors import ModelyardError


def _field_path(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts)


def create_app(ctx: Context) -> FastAPI:
    app = FastAPI(
        title="Modelyard control plane",
        version=__version__,
        description="Models and endpoints as resources. Authenticate with `Authorization: Bearer "
        "<token>` (the token is in the server's state directory).",
    )
    app.state.ctx = ctx

    @app.exception_handler(ModelyardError)
    async def _modelyard_error(_: Request, exc: ModelyardError) -> JSONResponse:
        return JSONResponse(exc.to_payload(), status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        field = _field_path(tuple(first.get("loc", ())))
        body = {
            "error": {"code": "spec_invalid", "message": f"{field}: {first['msg']}", "field": field}
        }
        return JSONResponse(body, status_code=400)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    scrape = metrics.registry(ctx.store, ctx.clock)

    @app.get("/metrics", summary="Prometheus metrics (bearer token, as the API)")
    def prometheus(_: Annotated[Context, Depends(context)]) -> Response:
        return Response(generate_latest(scrape), media_type=CONTENT_TYPE_LATEST)

    app.include_router(resources.router)
    app.include_router(alarms.router)
    app.include_router(deployments.router)
    app.include_router(internal.router)
    return app
