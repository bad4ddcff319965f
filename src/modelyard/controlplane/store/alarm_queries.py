"""The repository's queries on alarms (a mixin of :class:`Repo`; see alarms/evaluate.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from modelyard.controlplane.store.rows import AlarmRow, AlarmTransitionRow, NotificationRow

#: transitions kept per alarm (older ones are forgotten as new ones come)
HISTORY_KEPT = 1000
INITIAL_STATE = "INSUFFICIENT_DATA"


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    name: str
    spec: dict[str, Any]
    version: int
    state: str
    reason: str
    state_since: float
    evaluated_at: float | None
    evaluation: str
    webhook_secret: str
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class AlarmTransitionRecord:
    id: int
    alarm: str
    at: float
    old_state: str
    new_state: str
    reason: str


@dataclass(frozen=True, slots=True)
class AlarmDeliveryRecord:
    """A webhook told of an alarm's transition, and how its delivery went."""

    url: str
    state: str
    attempts: int
    last_error: str
    created_at: float


def _alarm(row: AlarmRow) -> AlarmRecord:
    return AlarmRecord(
        row.name,
        row.spec,
        row.version,
        row.state,
        row.reason,
        row.state_since,
        row.evaluated_at,
        row.evaluation,
        row.webhook_secret,
        row.created_at,
        row.updated_at,
    )


class AlarmQueries:
    s: Session

    def get_alarm(self, name: str) -> AlarmRecord | None:
        row = self.s.get(AlarmRow, name)
        return _alarm(row) if row else None

    def list_alarms(self) -> list[AlarmRecord]:
        return [_alarm(r) for r in self.s.scalars(select(AlarmRow).order_by(AlarmRow.name))]

    def put_alarm(self, name: str, spec: dict[str, Any], now: float, secret: str) -> str:
        """Create an alarm (INSUFFICIENT_DATA until evaluated; ``secret`` signs its webhooks) or
        change its spec, keeping its state, history and secret. Returns created, updated or
        unchanged."""
        row = self.s.get(AlarmRow, name)
        if row is None:
            self.s.add(
                AlarmRow(
                    name=name,
                    spec=spec,
                    version=1,
                    state=INITIAL_STATE,
                    reason="created: INSUFFICIENT_DATA until an evaluation finds otherwise",
                    state_since=now,
                    evaluated_at=None,
                    evaluation="",
                    webhook_secret=secret,
                    created_at=now,
                    updated_at=now,
                )
            )
            return "created"
        if row.spec == spec:
            return "unchanged"
        row.spec, row.version, row.updated_at = spec, row.version + 1, now
        return "updated"

    def record_evaluation(self, seen: AlarmRecord, state: str, reason: str, now: float) -> bool:
        """Record an evaluation made from ``seen``, and the transition when ``state`` differs
        from the state seen. Nothing is written when the alarm changed since (a new spec, or it
        was deleted): one conditional UPDATE, atomic on SQLite and PostgreSQL alike. Returns
        whether the alarm changed state."""
        values: dict[str, Any] = {"evaluated_at": now, "evaluation": reason}
        moved = state != seen.state
        if moved:
            values.update(state=state, reason=reason, state_since=now)
        result: Any = self.s.execute(
            update(AlarmRow)
            .where(
                AlarmRow.name == seen.name,
                AlarmRow.version == seen.version,
                AlarmRow.state == seen.state,
                AlarmRow.webhook_secret == seen.webhook_secret,  # not a namesake made since
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if not result.rowcount or not moved:
            return False
        self.s.add(
            AlarmTransitionRow(
                alarm=seen.name, at=now, old_state=seen.state, new_state=state, reason=reason
            )
        )
        self.s.flush()
        oldest_kept = self.s.scalar(
            select(AlarmTransitionRow.id)
            .where(AlarmTransitionRow.alarm == seen.name)
            .order_by(AlarmTransitionRow.id.desc())
            .offset(HISTORY_KEPT - 1)
            .limit(1)
        )
        if oldest_kept is not None:
            self.s.execute(
                delete(AlarmTransitionRow).where(
                    AlarmTransitionRow.alarm == seen.name, AlarmTransitionRow.id < oldest_kept
                )
            )
        return True

    def alarm_history(
        self, name: str, limit: int = 100, before_id: int | None = None
    ) -> list[AlarmTransitionRecord]:
        """An alarm's transitions, newest first (older than ``before_id`` when given)."""
        query = select(AlarmTransitionRow).where(AlarmTransitionRow.alarm == name)
        if before_id is not None:
            query = query.where(AlarmTransitionRow.id < before_id)
        rows = self.s.scalars(query.order_by(AlarmTransitionRow.id.desc()).limit(limit))
        return [
            AlarmTransitionRecord(r.id, r.alarm, r.at, r.old_state, r.new_state, r.reason)
            for r in rows
        ]

    def alarm_deliveries(self, name: str, limit: int = 10) -> list[AlarmDeliveryRecord]:
        """The alarm's most recent webhooks, newest first."""
        rows = self.s.scalars(
            select(NotificationRow)
            .where(NotificationRow.alarm == name)
            .order_by(NotificationRow.id.desc())
            .limit(limit)
        )
        return [
            AlarmDeliveryRecord(r.url, r.state, r.attempts, r.last_error, r.created_at)
            for r in rows
        ]

    def delete_alarm(self, name: str) -> bool:
        """Forget an alarm and its history; its webhooks still to deliver are delivered (they
        carry their secret). Whether there was one."""
        result: Any = self.s.execute(delete(AlarmRow).where(AlarmRow.name == name))
        self.s.execute(delete(AlarmTransitionRow).where(AlarmTransitionRow.alarm == name))
        self.s.execute(
            delete(NotificationRow).where(
                NotificationRow.alarm == name, NotificationRow.state != "pending"
            )
        )
        return bool(result.rowcount)
