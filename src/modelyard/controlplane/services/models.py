"""Models: read and delete (create and update go through apply)."""

from __future__ import annotations

from typing import Any

from modelyard.controlplane.store.repo import ModelRecord, Store
from modelyard.errors import ConflictError, NotFoundError


def model_view(record: ModelRecord) -> dict[str, Any]:
    return {
        "kind": "Model",
        "name": record.name,
        "spec": record.spec,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def list_models(store: Store) -> list[dict[str, Any]]:
    with store.tx() as repo:
        return [model_view(m) for m in repo.list_models()]


def get_model(store: Store, name: str) -> dict[str, Any]:
    with store.tx() as repo:
        record = repo.get_model(name)
    if record is None:
        raise NotFoundError(f"no model named {name!r}")
    return model_view(record)


def delete_model(store: Store, name: str) -> None:
    with store.tx() as repo:
        if repo.get_model(name) is None:
            raise NotFoundError(f"no model named {name!r}")
        users = []
        for endpoint in repo.list_endpoints():
            for number in {endpoint.target_revision, endpoint.active_revision}:
                rev = repo.get_revision(endpoint.name, number) if number else None
                if rev and name in rev.models:
                    users.append(endpoint.name)
        if users:
            raise ConflictError(
                f"model {name!r} is used by endpoint(s) {', '.join(sorted(set(users)))}; "
                "delete or update them first"
            )
        repo.delete_model(name)
