"""/api/v1: apply, models, endpoints, transform jobs, logs (alarms: routers/alarms.py)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query

from modelyard.controlplane.deps import Context, context
from modelyard.controlplane.routers.deployments import User
from modelyard.controlplane.services import endpoints, invocations, metrics_view, models, transforms
from modelyard.controlplane.services.apply import apply_documents
from modelyard.controlplane.services.apply import rollback_endpoint as rollback_endpoint_service
from modelyard.errors import InvalidInputError
from modelyard.spec import parse_document, parse_documents
from modelyard.spec.resources import TransformJobDocument

router = APIRouter(prefix="/api/v1")
Ctx = Annotated[Context, Depends(context)]


@router.post("/apply", summary="Create or update resources (idempotent, all or nothing)")
def apply(
    ctx: Ctx,
    documents: Annotated[
        list[dict[str, Any]],
        Body(embed=True, description="Documents, each {kind, name, spec}"),
    ],
    user: User,
) -> dict[str, Any]:
    docs = parse_documents(documents)
    results = apply_documents(ctx.store, docs, ctx.clock(), user)
    ctx.wake.set()
    ctx.wake_transforms.set()
    if any(r.kind == "Alarm" and r.action != "unchanged" for r in results):
        ctx.wake_alarms.set()
    return {"results": [r.to_json() for r in results]}


@router.get("/models")
def list_models(ctx: Ctx) -> dict[str, Any]:
    return {"items": models.list_models(ctx.store)}


@router.get("/models/{name}")
def get_model(ctx: Ctx, name: str) -> dict[str, Any]:
    return models.get_model(ctx.store, name)


@router.delete("/models/{name}")
def delete_model(ctx: Ctx, name: str) -> dict[str, Any]:
    models.delete_model(ctx.store, name)
    return {"deleted": name}


@router.get("/endpoints")
def list_endpoints(ctx: Ctx) -> dict[str, Any]:
    return {"items": endpoints.list_endpoints(ctx.store)}


@router.get("/endpoints/{name}")
def describe_endpoint(ctx: Ctx, name: str) -> dict[str, Any]:
    return endpoints.describe_endpoint(
        ctx.store, name, ctx.gateway_url, ctx.routes_read_at, ctx.state_dir, ctx.clock()
    )


@router.get(
    "/endpoints/{name}/metrics",
    summary="An endpoint's metrics over a window: every series, every statistic per period",
)
def endpoint_metrics(
    ctx: Ctx,
    name: str,
    since: Annotated[int, Query(description="seconds back from now")] = 900,
    period: Annotated[
        int | None, Query(description="seconds per period, a multiple of 10 (default: ~90)")
    ] = None,
    metric: Annotated[str | None, Query(description="one metric only")] = None,
    variant: Annotated[str | None, Query(description="one variant only")] = None,
) -> dict[str, Any]:
    return metrics_view.read_metrics(
        ctx.store,
        name,
        ctx.clock(),
        since_s=since,
        period_s=period,
        metric=metric,
        variant=variant,
    )


@router.get(
    "/endpoints/{name}/scaling-activities",
    summary="An endpoint's scaling activities (capacity and bounds changes), newest first",
)
def scaling_activities(
    ctx: Ctx,
    name: str,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    variant: Annotated[str | None, Query(description="one variant only")] = None,
) -> dict[str, Any]:
    return {"items": endpoints.scaling_activities(ctx.store, name, limit, variant)}


@router.get(
    "/endpoints/{name}/async-invocations",
    summary="Requests of an async endpoint, newest first",
)
def list_async_invocations(
    ctx: Ctx,
    name: str,
    status: Annotated[str | None, Query(description="Queued, Running, Completed or Failed")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    return {"items": invocations.list_invocations(ctx.store, ctx.inbox_dir, name, status, limit)}


@router.get(
    "/endpoints/{name}/async-invocations/{inference_id}",
    summary="The status of one async request: queued, running, completed or failed",
)
def get_async_invocation(ctx: Ctx, name: str, inference_id: str) -> dict[str, Any]:
    return invocations.get_invocation(ctx.store, ctx.inbox_dir, name, inference_id)


@router.post("/endpoints/{name}/rollback", summary="Roll out an earlier revision again")
def rollback_endpoint(
    ctx: Ctx,
    name: str,
    revision: Annotated[int, Body(embed=True, ge=1, description="The revision to return to")],
    user: User,
) -> dict[str, Any]:
    result = rollback_endpoint_service(ctx.store, name, revision, ctx.clock(), user)
    ctx.wake.set()
    return result.to_json()


@router.delete("/endpoints/{name}", status_code=202)
def delete_endpoint(ctx: Ctx, name: str) -> dict[str, Any]:
    endpoints.delete_endpoint(ctx.store, name, ctx.clock())
    ctx.wake.set()
    return {"deleting": name}


@router.get("/endpoints/{name}/logs")
def endpoint_logs(
    ctx: Ctx,
    name: str,
    tail: Annotated[int, Query(ge=0, le=10000)] = 100,
    cursor: Annotated[str | None, Query(description="JSON cursor from a previous call")] = None,
) -> dict[str, Any]:
    parsed = None
    if cursor:
        try:
            parsed = {str(k): int(v) for k, v in json.loads(cursor).items()}
        except (ValueError, AttributeError, TypeError) as exc:
            raise InvalidInputError(
                "cursor: must be the JSON object a previous call returned"
            ) from exc
    return endpoints.read_logs(ctx.store, ctx.logs_dir, name, tail, parsed)


@router.post(
    "/transform-jobs",
    status_code=201,
    summary="Start a transform job (its model must exist); the same job again is a no-op",
)
def create_transform_job(
    ctx: Ctx,
    name: Annotated[str, Body(description="the job's name")],
    spec: Annotated[dict[str, Any], Body(description="a TransformJob spec")],
) -> dict[str, Any]:
    doc = parse_document({"kind": "TransformJob", "name": name, "spec": spec})
    assert isinstance(doc, TransformJobDocument)
    (result,) = apply_documents(ctx.store, [doc], ctx.clock())
    ctx.wake_transforms.set()
    return result.to_json()


@router.get("/transform-jobs", summary="Transform jobs, newest first")
def list_transform_jobs(ctx: Ctx) -> dict[str, Any]:
    return {"items": transforms.list_jobs(ctx.store)}


@router.get("/transform-jobs/{name}", summary="A transform job: status, progress and summary")
def describe_transform_job(ctx: Ctx, name: str) -> dict[str, Any]:
    return transforms.describe_job(ctx.store, name, ctx.clock())


@router.post("/transform-jobs/{name}/stop", status_code=202, summary="Stop a running job")
def stop_transform_job(ctx: Ctx, name: str) -> dict[str, Any]:
    result = transforms.stop_job(ctx.store, name)
    ctx.wake_transforms.set()
    return result


@router.get("/transform-jobs/{name}/logs", summary="The job's log and its replicas' logs")
def transform_job_logs(
    ctx: Ctx, name: str, tail: Annotated[int, Query(ge=0, le=10000)] = 100
) -> dict[str, Any]:
    return transforms.read_logs(ctx.store, ctx.logs_dir, name, tail)
