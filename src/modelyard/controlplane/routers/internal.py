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
    batches: Annotated[list[dict[str, Any]], Body(embed=True)] = [],  # noqa: B006
    active: Annotated[list[str], Body(embed=True)] = [],  # noqa: B006 (FastAPI copies it)
    busy: Annotated[dict[str, float], Body(embed=True)] = {},  # noqa: B006
    worker: Annotated[int, Body(embed=True)] = 0,
) -> dict[str, Any]:
    """The gateway reports invocation counts since its last call (numbered batches, each of a
    10 s interval), and the endpoints with
    requests in progress (held ones included: a serverless endpoint at zero starts a replica),
    and gets the routing table. Counts, latencies and requests in progress also become metric
    points."""
    now = ctx.clock()
    for batch in batches:  # in order; a batch applied before (its answer lost) is skipped
        seq = int(batch["seq"])
        if not ctx.ledger.claim(worker, seq):
            continue
        counts: dict[str, dict[str, list[float]]] = batch["counts"]
        try:
            endpoints.record_counts(ctx.store, counts, now)
        except BaseException:
            ctx.ledger.release(worker, seq)  # not applied: the gateway sends it again
            raise
        if ctx.recorder is not None:  # in the interval the gateway counted them in
            ctx.recorder.gateway_report(counts, float(batch["at"]))
    if active:
        endpoints.record_activity(ctx.store, active, now)
        ctx.wake.set()
    table = endpoints.routes(ctx.store, ctx.state_dir)
    if ctx.recorder is not None:
        ctx.recorder.in_flight(worker, busy, list(table), now)
    ctx.routes_read_at = now
    return {"routes": table}
