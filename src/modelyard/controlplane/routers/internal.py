"""/internal/v1: what the gateway asks of the control plane."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends

from modelyard.controlplane.deps import Context, context
from modelyard.controlplane.services import endpoints

router = APIRouter(prefix="/internal/v1", include_in_schema=False)


@router.post("/gateway/sync")
def gateway_sync(
    ctx: Annotated[Context, Depends(context)],
    counts: Annotated[dict[str, dict[str, list[int]]], Body(embed=True)],
) -> dict[str, Any]:
    """The gateway reports invocation counts since its last call and gets the routing table."""
    now = ctx.clock()
    endpoints.record_counts(ctx.store, counts, now)
    table = endpoints.routes(ctx.store)
    ctx.routes_read_at = now
    return {"routes": table}
