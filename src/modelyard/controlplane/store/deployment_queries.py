"""The repository's queries on deployments (a mixin of :class:`Repo`; see
controlplane/reconcile/rollout.py)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from modelyard.controlplane.store.rows import DeploymentRow

#: entries kept in a deployment's log (the first ones and the latest ones matter)
LOG_KEPT = 200


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    id: int
    endpoint: str
    from_revision: int | None
    to_revision: int
    mode: str
    policy: dict[str, Any]
    status: str
    phase: str
    steps: list[float]
    step: int
    share: float
    step_started_at: float | None
    restored: float
    rollback_batch: float
    started_at: float
    finished_at: float | None
    updated_at: float
    by: str
    changes: list[str]
    reason: str
    alarm: str | None
    abort_by: str | None
    log: list[dict[str, Any]]

    @property
    def active(self) -> bool:
        return self.status == "InProgress"


_FIELDS = [f.name for f in fields(DeploymentRecord)]


def _deployment(row: DeploymentRow) -> DeploymentRecord:
    return DeploymentRecord(**{name: getattr(row, name) for name in _FIELDS})


class DeploymentQueries:
    s: Session

    def add_deployment(
        self,
        endpoint: str,
        *,
        from_revision: int | None,
        to_revision: int,
        mode: str,
        policy: dict[str, Any],
        by: str,
        changes: list[str],
        now: float,
        message: str,
    ) -> int:
        row = DeploymentRow(
            endpoint=endpoint,
            from_revision=from_revision,
            to_revision=to_revision,
            mode=mode,
            policy=policy,
            status="InProgress",
            phase="provisioning",
            steps=[],
            step=-1,
            share=0.0,
            step_started_at=None,
            restored=0.0,
            rollback_batch=1.0,
            started_at=now,
            finished_at=None,
            updated_at=now,
            by=by,
            changes=changes,
            reason="",
            alarm=None,
            abort_by=None,
            log=[{"at": now, "message": message}],
        )
        self.s.add(row)
        self.s.flush()
        return row.id

    def get_deployment(self, deployment_id: int) -> DeploymentRecord | None:
        row = self.s.get(DeploymentRow, deployment_id)
        return _deployment(row) if row is not None else None

    def active_deployment(self, endpoint: str) -> DeploymentRecord | None:
        row = self.s.scalars(
            select(DeploymentRow)
            .where(DeploymentRow.endpoint == endpoint, DeploymentRow.status == "InProgress")
            .order_by(DeploymentRow.id.desc())
            .limit(1)
        ).first()
        return _deployment(row) if row is not None else None

    def active_deployments(self) -> dict[str, DeploymentRecord]:
        """Every endpoint's running deployment."""
        rows = self.s.scalars(
            select(DeploymentRow)
            .where(DeploymentRow.status == "InProgress")
            .order_by(DeploymentRow.id)
        )
        return {row.endpoint: _deployment(row) for row in rows}

    def list_deployments(self, endpoint: str, limit: int = 50) -> list[DeploymentRecord]:
        """An endpoint's deployments, newest first."""
        rows = self.s.scalars(
            select(DeploymentRow)
            .where(DeploymentRow.endpoint == endpoint)
            .order_by(DeploymentRow.id.desc())
            .limit(limit)
        )
        return [_deployment(row) for row in rows]

    def update_deployment_if(
        self, seen: DeploymentRecord, now: float, note: str = "", **values: Any
    ) -> bool:
        """Write ``values`` unless the deployment changed since ``seen`` was read (another tick,
        an abort); ``note`` is added to its log."""
        if note:
            log = [*seen.log, {"at": now, "message": note}]
            if len(log) > LOG_KEPT:
                log = log[:10] + log[-(LOG_KEPT - 10) :]
            values["log"] = log
        result = self.s.execute(
            update(DeploymentRow)
            .where(DeploymentRow.id == seen.id, DeploymentRow.updated_at == seen.updated_at)
            .values(updated_at=max(now, seen.updated_at + 1e-6), **values)
        )
        return bool(getattr(result, "rowcount", 0))

    def delete_deployments(self, endpoint: str) -> None:
        self.s.execute(delete(DeploymentRow).where(DeploymentRow.endpoint == endpoint))
