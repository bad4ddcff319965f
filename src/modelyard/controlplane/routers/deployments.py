"""/api/v1/endpoints/{name}: rollouts (status, abort, resume), the deployment history,
weights and capacities changed in place, and the shadow variant's report and promotion."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import APIRouter, Body, Depends, Header, Query

from modelyard.controlplane.deps import Context, context
from modelyard.controlplane.services import deployments, shadow

router = APIRouter(prefix="/api/v1")
Ctx = Annotated[Context, Depends(context)]


def _user(
    raw: Annotated[str, Header(alias="X-Modelyard-User", max_length=512)] = "api",
) -> str:
    """Who asks (the CLI and the SDK send the login name, percent-encoded); recorded with each
    deployment."""
    return unquote(raw)[:128] or "api"


User = Annotated[str, Depends(_user)]


@router.get(
    "/endpoints/{name}/rollout",
    summary="The running (or latest) rollout: steps, traffic split, baking timer, alarms",
)
def rollout_status(ctx: Ctx, name: str) -> dict[str, Any]:
    return deployments.rollout_status(ctx.store, name, ctx.clock())


@router.post(
    "/endpoints/{name}/rollout/abort",
    summary="Roll the running rollout back: all traffic returns to the revision served before",
)
def abort_rollout(ctx: Ctx, name: str, user: User) -> dict[str, Any]:
    view = deployments.abort(ctx.store, name, user, ctx.clock())
    ctx.wake.set()
    return view


@router.post(
    "/endpoints/{name}/rollout/resume",
    summary="Deploy again the revision whose rollout was rolled back, aborted or failed",
)
def resume_rollout(ctx: Ctx, name: str, user: User) -> dict[str, Any]:
    view = deployments.resume(ctx.store, name, user, ctx.clock())
    ctx.wake.set()
    return view


@router.get(
    "/endpoints/{name}/deployments", summary="Every deployment of the endpoint, newest first"
)
def deployment_history(
    ctx: Ctx, name: str, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> dict[str, Any]:
    return {"deployments": deployments.history(ctx.store, name, ctx.clock(), limit)}


@router.post(
    "/endpoints/{name}/weights-and-capacities",
    summary="Change variants' weights and instance counts without replacing replicas",
)
def update_weights_and_capacities(
    ctx: Ctx,
    name: str,
    variants: Annotated[
        list[dict[str, Any]],
        Body(embed=True, description="[{name, weight?, instance_count?}]"),
    ],
    user: User,
) -> dict[str, Any]:
    result = deployments.update_weights_and_capacities(ctx.store, name, variants, user, ctx.clock())
    ctx.wake.set()
    return result


@router.get(
    "/endpoints/{name}/shadow",
    summary="Production against the shadow variant: traffic, errors, latency, agreement",
)
def shadow_report(
    ctx: Ctx, name: str, since: Annotated[int, Query(ge=1, description="seconds back")] = 900
) -> dict[str, Any]:
    return shadow.report(ctx.store, name, ctx.clock(), since)


@router.post(
    "/endpoints/{name}/shadow/promote",
    summary="Make the shadow variant the production one (rolled out by the deployment policy)",
)
def promote_shadow(ctx: Ctx, name: str, user: User) -> dict[str, Any]:
    result = shadow.promote(ctx.store, name, user, ctx.clock())
    ctx.wake.set()
    return result
