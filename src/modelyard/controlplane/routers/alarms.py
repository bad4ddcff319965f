"""/api/v1/alarms: alarms' states and histories (they are created and changed by apply)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from modelyard.controlplane.deps import Context, context
from modelyard.controlplane.services import alarms

router = APIRouter(prefix="/api/v1")
Ctx = Annotated[Context, Depends(context)]


@router.get("/alarms", summary="Alarms: state, condition, since when")
def list_alarms(ctx: Ctx) -> dict[str, Any]:
    return {"items": alarms.list_alarms(ctx.store)}


@router.get(
    "/alarms/{name}",
    summary="An alarm: spec, state and why, latest evaluation, webhook secret, recent history",
)
def describe_alarm(ctx: Ctx, name: str) -> dict[str, Any]:
    return alarms.describe_alarm(ctx.store, name)


@router.get("/alarms/{name}/history", summary="An alarm's changes of state, newest first")
def alarm_history(
    ctx: Ctx,
    name: str,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        int | None, Query(description="the `next` of the previous page: older entries only")
    ] = None,
) -> dict[str, Any]:
    return alarms.alarm_history(ctx.store, name, limit, before)


@router.delete("/alarms/{name}", summary="Delete an alarm (its pending webhooks still go out)")
def delete_alarm(ctx: Ctx, name: str) -> dict[str, Any]:
    alarms.delete_alarm(ctx.store, name)
    return {"deleted": name}
