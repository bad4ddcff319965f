"""Async invocations as the API shows them: one request's status, or an endpoint's latest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelyard import inbox
from modelyard.controlplane.reconcile.asyncq import failure_uri, result_uri
from modelyard.controlplane.store.repo import AsyncRecord, Store
from modelyard.errors import InvalidInputError, NotFoundError

#: The store's states as SageMaker's invocation statuses.
STATUS = {"queued": "Queued", "running": "Running", "succeeded": "Completed", "failed": "Failed"}
_BY_STATUS = {v.lower(): k for k, v in STATUS.items()}


def view(job: AsyncRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "inference_id": job.id,
        "endpoint": job.endpoint,
        "status": STATUS.get(job.state, job.state),
        "input_location": job.input_uri,
        "input_bytes": job.input_bytes,
        "received_at": job.created_at,
        "expires_at": job.expires_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "attempts": job.attempt,
        "client_inference_id": job.client_inference_id or None,
        "message": job.message,
    }
    if job.state == "succeeded":
        out["output_location"] = result_uri(job.output_location, job.id)
        out["output_bytes"] = job.output_bytes
    if job.state == "failed":
        out["failure_location"] = failure_uri(job.failure_location, job.id)
        out["failure_reason"] = job.message
    return out


def _inbox_view(entry: dict[str, Any]) -> dict[str, Any]:
    """A request the gateway accepted that the dispatcher has not moved into the store yet."""
    return {
        "inference_id": entry["id"],
        "endpoint": entry["endpoint"],
        "status": "Queued",
        "input_location": entry.get("input_uri"),
        "input_bytes": entry.get("input_bytes"),
        "received_at": entry.get("received_at"),
        "attempts": 0,
        "client_inference_id": entry.get("client_inference_id") or None,
        "message": "",
    }


def get_invocation(
    store: Store, inbox_dir: Path, endpoint: str, inference_id: str
) -> dict[str, Any]:
    with store.tx() as repo:
        job = repo.get_async(inference_id)
        known = repo.get_endpoint(endpoint) is not None
    if job is not None and job.endpoint == endpoint:
        return view(job)
    entry = inbox.peek(inbox_dir, inference_id) if "/" not in inference_id else None
    if entry is not None and entry.get("endpoint") == endpoint:
        return _inbox_view(entry)
    if not known:
        raise NotFoundError(f"no endpoint named {endpoint!r}")
    raise NotFoundError(f"endpoint {endpoint!r} has no async request {inference_id!r}")


def list_invocations(
    store: Store, inbox_dir: Path, endpoint: str, status: str | None, limit: int
) -> list[dict[str, Any]]:
    states = None
    if status is not None:
        state = _BY_STATUS.get(status.lower())
        if state is None:
            raise InvalidInputError(f"status: one of {', '.join(STATUS.values())} (got {status!r})")
        states = (state,)
    with store.tx() as repo:
        if repo.get_endpoint(endpoint) is None:
            raise NotFoundError(f"no endpoint named {endpoint!r}")
        jobs = repo.list_async(endpoint, states, limit=limit, oldest_first=False)
    waiting = []
    if status is None or status.lower() == "queued":
        waiting = [
            _inbox_view(e) for _, e in inbox.entries(inbox_dir) if e.get("endpoint") == endpoint
        ]
    return (waiting + [view(j) for j in jobs])[:limit]
