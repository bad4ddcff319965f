"""The repository: the only code that touches rows. It hands out frozen records.

Use ``with store.tx() as repo:`` for one transaction. No network or executor call happens inside
one (docs/LOCKING.md): read, commit, act, then write the result in a new transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from modelyard.controlplane.store.alarm_queries import AlarmQueries
from modelyard.controlplane.store.autoscale_queries import AutoscaleQueries
from modelyard.controlplane.store.db import make_engine, migrate, session_factory
from modelyard.controlplane.store.deployment_queries import DeploymentQueries
from modelyard.controlplane.store.metric_queries import MetricQueries
from modelyard.controlplane.store.rows import (
    AsyncInvocationRow,
    CounterRow,
    EndpointRow,
    EventRow,
    MetricPointRow,
    ModelRow,
    NotificationRow,
    ReplicaRow,
    RevisionRow,
    TransformJobRow,
)
from modelyard.errors import StoreError


@dataclass(frozen=True, slots=True)
class ModelRecord:
    name: str
    spec: dict[str, Any]
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    name: str
    status: str
    message: str
    target_revision: int
    active_revision: int | None
    deleting: bool
    created_at: float
    updated_at: float
    last_request_at: float | None
    webhook_secret: str


@dataclass(frozen=True, slots=True)
class RevisionRecord:
    endpoint: str
    number: int
    spec: dict[str, Any]
    models: dict[str, Any]
    state: str
    message: str
    created_at: float


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    id: str
    endpoint: str
    revision: int
    variant: str
    state: str
    pid: int | None
    pid_started_at: float | None
    address: str | None
    log_path: str
    attempts: int
    restarts: int
    ever_ready: bool
    last_exit_code: int | None
    message: str
    started_at: float | None
    ready_at: float | None
    next_start_at: float | None
    stop_requested_at: float | None
    signalled: int


@dataclass(frozen=True, slots=True)
class EventRecord:
    endpoint: str
    at: float
    message: str


@dataclass(frozen=True, slots=True)
class CounterRecord:
    endpoint: str
    variant: str
    invocations: int
    errors_4xx: int
    errors_5xx: int
    last_at: float | None
    cold_starts: int
    cold_start_ms: float


@dataclass(frozen=True, slots=True)
class AsyncRecord:
    id: str
    endpoint: str
    state: str
    input_uri: str
    input_owned: bool
    input_bytes: int | None
    content_type: str
    accept: str
    custom_attributes: str
    client_inference_id: str
    output_location: str
    failure_location: str
    created_at: float
    expires_at: float
    timeout_s: float | None
    attempt: int
    tries: int
    started_at: float | None
    finished_at: float | None
    replica_id: str | None
    dispatcher: str | None
    output_bytes: int | None
    message: str


@dataclass(frozen=True, slots=True)
class BacklogRecord:
    endpoint: str
    queued: int
    running: int
    oldest_queued_at: float | None


@dataclass(frozen=True, slots=True)
class NotificationRecord:
    id: int
    endpoint: str
    inference_id: str
    url: str
    body: str
    secret: str
    state: str
    attempts: int
    next_at: float
    last_error: str
    created_at: float
    alarm: str


@dataclass(frozen=True, slots=True)
class TransformRecord:
    name: str
    status: str
    message: str
    spec: dict[str, Any]
    model: dict[str, Any]
    created_at: float
    started_at: float | None
    finished_at: float | None
    stop_requested: bool
    attempt: int
    files: list[dict[str, Any]] | None
    total_records: int | None
    cursor: dict[str, Any]
    failure_bytes: int
    records_done: int
    records_failed: int
    replicas: list[dict[str, Any]]
    run_seconds: float


#: transform job statuses a runner works on
TRANSFORM_ACTIVE = ("InProgress", "Stopping")


def _record(cls: type[Any], row: Any) -> Any:
    return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})


class Repo(MetricQueries, AlarmQueries, AutoscaleQueries, DeploymentQueries):
    """Queries and writes inside one transaction (metric points: store/metric_queries.py;
    alarms: store/alarm_queries.py; capacities and scaling activities:
    store/autoscale_queries.py; deployments: store/deployment_queries.py)."""

    def __init__(self, session: Session) -> None:
        self.s = session

    # models
    def get_model(self, name: str) -> ModelRecord | None:
        row = self.s.get(ModelRow, name)
        return _record(ModelRecord, row) if row else None

    def list_models(self) -> list[ModelRecord]:
        rows = self.s.scalars(select(ModelRow).order_by(ModelRow.name))
        return [_record(ModelRecord, r) for r in rows]

    def put_model(self, name: str, spec: dict[str, Any], now: float) -> None:
        row = self.s.get(ModelRow, name)
        if row is None:
            self.s.add(ModelRow(name=name, spec=spec, created_at=now, updated_at=now))
        else:
            row.spec, row.updated_at = spec, now

    def delete_model(self, name: str) -> None:
        self.s.execute(delete(ModelRow).where(ModelRow.name == name))

    # endpoints and revisions
    def get_endpoint(self, name: str) -> EndpointRecord | None:
        row = self.s.get(EndpointRow, name)
        return _record(EndpointRecord, row) if row else None

    def list_endpoints(self) -> list[EndpointRecord]:
        rows = self.s.scalars(select(EndpointRow).order_by(EndpointRow.name))
        return [_record(EndpointRecord, r) for r in rows]

    def create_endpoint(self, name: str, now: float, webhook_secret: str = "") -> None:
        self.s.add(
            EndpointRow(
                name=name,
                status="Creating",
                message="",
                target_revision=0,
                active_revision=None,
                deleting=False,
                created_at=now,
                updated_at=now,
                last_request_at=None,
                webhook_secret=webhook_secret,
            )
        )
        self.s.flush()

    def update_endpoint(self, name: str, now: float, **values: Any) -> None:
        row = self.s.get(EndpointRow, name)
        if row is None:
            return
        for key, value in values.items():
            setattr(row, key, value)
        row.updated_at = now

    def update_endpoint_if_unchanged(self, seen: EndpointRecord, now: float, **values: Any) -> bool:
        """Update the endpoint only if the API has not changed it since ``seen`` was read (no new
        revision applied, no delete asked): the controller must never undo a user's write. One
        conditional UPDATE, atomic on SQLite and PostgreSQL alike."""
        result = self.s.execute(
            update(EndpointRow)
            .where(
                EndpointRow.name == seen.name,
                EndpointRow.target_revision == seen.target_revision,
                EndpointRow.deleting == seen.deleting,
            )
            .values(**values, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0))

    def touch_endpoints(self, names: list[str], now: float) -> None:
        """Record that these endpoints had requests in progress now (not a change of the
        endpoint: ``updated_at`` stays)."""
        if names:
            self.s.execute(
                update(EndpointRow)
                .where(EndpointRow.name.in_(names))
                .values(last_request_at=now)
                .execution_options(synchronize_session=False)
            )

    def delete_endpoint(self, name: str) -> None:
        for table in (ReplicaRow, RevisionRow):
            self.s.execute(delete(table).where(table.endpoint == name))
        self.s.execute(delete(EventRow).where(EventRow.endpoint == name))
        self.s.execute(delete(CounterRow).where(CounterRow.endpoint == name))
        self.s.execute(delete(MetricPointRow).where(MetricPointRow.endpoint == name))
        self.s.execute(delete(AsyncInvocationRow).where(AsyncInvocationRow.endpoint == name))
        self.delete_capacity(name)
        self.delete_scaling_activities(name)
        self.delete_deployments(name)
        # Webhooks still to deliver outlive the endpoint (they carry their secret).
        self.s.execute(
            delete(NotificationRow).where(
                NotificationRow.endpoint == name, NotificationRow.state != "pending"
            )
        )
        self.s.execute(delete(EndpointRow).where(EndpointRow.name == name))

    def add_revision(
        self, endpoint: str, number: int, spec: dict[str, Any], models: dict[str, Any], now: float
    ) -> None:
        self.s.add(
            RevisionRow(
                endpoint=endpoint,
                number=number,
                spec=spec,
                models=models,
                state="pending",
                message="",
                created_at=now,
            )
        )

    def get_revision(self, endpoint: str, number: int) -> RevisionRecord | None:
        row = self.s.scalar(
            select(RevisionRow).where(
                RevisionRow.endpoint == endpoint, RevisionRow.number == number
            )
        )
        return _record(RevisionRecord, row) if row else None

    def list_revisions(self, endpoint: str) -> list[RevisionRecord]:
        rows = self.s.scalars(
            select(RevisionRow).where(RevisionRow.endpoint == endpoint).order_by(RevisionRow.number)
        )
        return [_record(RevisionRecord, r) for r in rows]

    def latest_revision_number(self, endpoint: str) -> int:
        revs = self.list_revisions(endpoint)
        return revs[-1].number if revs else 0

    def set_revision_state(self, endpoint: str, number: int, state: str, message: str) -> None:
        row = self.s.scalar(
            select(RevisionRow).where(
                RevisionRow.endpoint == endpoint, RevisionRow.number == number
            )
        )
        if row is not None:
            row.state, row.message = state, message

    # replicas
    def list_replicas(self, endpoint: str | None = None) -> list[ReplicaRecord]:
        query = select(ReplicaRow).order_by(ReplicaRow.endpoint, ReplicaRow.id)
        if endpoint is not None:
            query = query.where(ReplicaRow.endpoint == endpoint)
        return [_record(ReplicaRecord, r) for r in self.s.scalars(query)]

    def add_replica(self, **values: Any) -> None:
        defaults: dict[str, Any] = {
            "state": "pending",
            "log_path": "",
            "attempts": 0,
            "restarts": 0,
            "ever_ready": False,
            "message": "",
            "signalled": 0,
        }
        self.s.add(ReplicaRow(**{**defaults, **values}))

    def update_replica(self, replica_id: str, **values: Any) -> None:
        row = self.s.get(ReplicaRow, replica_id)
        if row is not None:
            for key, value in values.items():
                setattr(row, key, value)

    def delete_replica(self, replica_id: str) -> None:
        self.s.execute(delete(ReplicaRow).where(ReplicaRow.id == replica_id))

    # events and counters
    def add_event(self, endpoint: str, message: str, now: float) -> None:
        self.s.add(EventRow(endpoint=endpoint, at=now, message=message))

    def list_events(self, endpoint: str, limit: int = 20) -> list[EventRecord]:
        rows = self.s.scalars(
            select(EventRow)
            .where(EventRow.endpoint == endpoint)
            .order_by(EventRow.id.desc())
            .limit(limit)
        )
        return list(reversed([_record(EventRecord, r) for r in rows]))

    def add_counts(
        self,
        endpoint: str,
        variant: str,
        invocations: int,
        e4: int,
        e5: int,
        now: float,
        cold_starts: int = 0,
        cold_start_ms: float = 0.0,
    ) -> None:
        if self.s.get(EndpointRow, endpoint) is None:
            return  # counts for an endpoint deleted since the gateway counted them
        row = self.s.get(CounterRow, (endpoint, variant))
        if row is None:
            row = CounterRow(
                endpoint=endpoint,
                variant=variant,
                invocations=0,
                errors_4xx=0,
                errors_5xx=0,
                cold_starts=0,
                cold_start_ms=0.0,
            )
            self.s.add(row)
        row.invocations += invocations
        row.errors_4xx += e4
        row.errors_5xx += e5
        row.cold_starts += cold_starts
        row.cold_start_ms += cold_start_ms
        row.last_at = now

    def list_counts(self, endpoint: str | None = None) -> list[CounterRecord]:
        query = select(CounterRow).order_by(CounterRow.endpoint, CounterRow.variant)
        if endpoint is not None:
            query = query.where(CounterRow.endpoint == endpoint)
        return [_record(CounterRecord, r) for r in self.s.scalars(query)]

    # the async queue
    def add_async(self, **values: Any) -> bool:
        """Queue a request; False when one with this id is known already (an inbox entry read
        twice)."""
        if self.s.get(AsyncInvocationRow, values["id"]) is not None:
            return False
        defaults: dict[str, Any] = {"state": "queued", "attempt": 0, "tries": 0, "message": ""}
        self.s.add(AsyncInvocationRow(**{**defaults, **values}))
        return True

    def get_async(self, inference_id: str) -> AsyncRecord | None:
        row = self.s.get(AsyncInvocationRow, inference_id)
        return _record(AsyncRecord, row) if row else None

    def list_async(
        self,
        endpoint: str | None = None,
        states: tuple[str, ...] | None = None,
        limit: int = 100,
        oldest_first: bool = True,
        expires_before: float | None = None,
        dispatcher: str | None = None,
    ) -> list[AsyncRecord]:
        query = select(AsyncInvocationRow)
        if dispatcher is not None:
            query = query.where(AsyncInvocationRow.dispatcher == dispatcher)
        if endpoint is not None:
            query = query.where(AsyncInvocationRow.endpoint == endpoint)
        if expires_before is not None:
            query = query.where(AsyncInvocationRow.expires_at <= expires_before)
        if states is not None:
            query = query.where(AsyncInvocationRow.state.in_(states))
        order = AsyncInvocationRow.created_at
        query = query.order_by(order if oldest_first else order.desc()).limit(limit)
        return [_record(AsyncRecord, r) for r in self.s.scalars(query)]

    def update_async_if(
        self, inference_id: str, state: str, attempt: int, /, **values: Any
    ) -> bool:
        """Change a request only if it is still in ``state`` at ``attempt`` (one conditional
        UPDATE: two dispatches can never both claim or finish one request)."""
        result = self.s.execute(
            update(AsyncInvocationRow)
            .where(
                AsyncInvocationRow.id == inference_id,
                AsyncInvocationRow.state == state,
                AsyncInvocationRow.attempt == attempt,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0))

    def backlog(self) -> dict[str, BacklogRecord]:
        """Per endpoint: requests queued, running, and when the oldest queued one arrived."""
        rows = self.s.execute(
            select(
                AsyncInvocationRow.endpoint,
                AsyncInvocationRow.state,
                func.count(),
                func.min(AsyncInvocationRow.created_at),
            )
            .where(AsyncInvocationRow.state.in_(("queued", "running")))
            .group_by(AsyncInvocationRow.endpoint, AsyncInvocationRow.state)
        )
        found: dict[str, dict[str, Any]] = {}
        for endpoint, state, count, oldest in rows:
            entry = found.setdefault(endpoint, {"queued": 0, "running": 0, "oldest": None})
            entry[state] = int(count)
            if state == "queued":
                entry["oldest"] = oldest
        return {
            name: BacklogRecord(name, e["queued"], e["running"], e["oldest"])
            for name, e in found.items()
        }

    def async_totals(self, endpoint: str) -> dict[str, int]:
        rows = self.s.execute(
            select(AsyncInvocationRow.state, func.count())
            .where(AsyncInvocationRow.endpoint == endpoint)
            .group_by(AsyncInvocationRow.state)
        )
        return {state: int(count) for state, count in rows}

    def pending_async_ids(self) -> set[str]:
        """Ids of the requests still queued or running."""
        rows = self.s.scalars(
            select(AsyncInvocationRow.id).where(AsyncInvocationRow.state.in_(("queued", "running")))
        )
        return set(rows)

    def purge_async(self, finished_before: float) -> int:
        """Forget finished requests (and settled notifications) older than a cutoff: their result
        and failure files stay where they were written."""
        done = self.s.execute(
            delete(AsyncInvocationRow)
            .where(
                AsyncInvocationRow.state.in_(("succeeded", "failed")),
                AsyncInvocationRow.finished_at < finished_before,
            )
            .execution_options(synchronize_session=False)
        )
        self.s.execute(
            delete(NotificationRow)
            .where(
                NotificationRow.state.in_(("delivered", "failed")),
                NotificationRow.created_at < finished_before,
            )
            .execution_options(synchronize_session=False)
        )
        return int(getattr(done, "rowcount", 0) or 0)

    # notifications
    def add_notification(
        self,
        endpoint: str,
        inference_id: str,
        url: str,
        body: str,
        secret: str,
        now: float,
        alarm: str = "",
    ) -> None:
        self.s.add(
            NotificationRow(
                endpoint=endpoint,
                inference_id=inference_id,
                alarm=alarm,
                url=url,
                body=body,
                secret=secret,
                state="pending",
                attempts=0,
                next_at=now,
                last_error="",
                created_at=now,
            )
        )

    def due_notifications(self, now: float, limit: int) -> list[NotificationRecord]:
        rows = self.s.scalars(
            select(NotificationRow)
            .where(NotificationRow.state == "pending", NotificationRow.next_at <= now)
            .order_by(NotificationRow.next_at)
            .limit(limit)
        )
        return [_record(NotificationRecord, r) for r in rows]

    def list_notifications(self, inference_id: str) -> list[NotificationRecord]:
        rows = self.s.scalars(
            select(NotificationRow)
            .where(NotificationRow.inference_id == inference_id)
            .order_by(NotificationRow.id)
        )
        return [_record(NotificationRecord, r) for r in rows]

    def update_notification(self, notification_id: int, **values: Any) -> None:
        row = self.s.get(NotificationRow, notification_id)
        if row is not None:
            for key, value in values.items():
                setattr(row, key, value)

    # transform jobs
    def add_transform(
        self, name: str, spec: dict[str, Any], model: dict[str, Any], now: float
    ) -> None:
        self.s.add(
            TransformJobRow(
                name=name,
                status="InProgress",
                message="",
                spec=spec,
                model=model,
                created_at=now,
                stop_requested=False,
                attempt=0,
                cursor={"file": 0, "start": 0, "line": 1, "out_bytes": 0, "finalizing": False},
                failure_bytes=0,
                records_done=0,
                records_failed=0,
                replicas=[],
                run_seconds=0.0,
            )
        )
        self.s.flush()

    def get_transform(self, name: str) -> TransformRecord | None:
        row = self.s.get(TransformJobRow, name)
        return _record(TransformRecord, row) if row else None

    def list_transforms(self, active_only: bool = False) -> list[TransformRecord]:
        query = select(TransformJobRow).order_by(TransformJobRow.created_at.desc())
        if active_only:
            query = query.where(TransformJobRow.status.in_(TRANSFORM_ACTIVE))
        return [_record(TransformRecord, r) for r in self.s.scalars(query)]

    def update_transform(self, name: str, *, if_attempt: int | None = None, **values: Any) -> bool:
        """Write ``values``; with ``if_attempt``, only while the job's attempt is still that one
        (a run that lost its claim writes nothing). Whether a row was written."""
        query = update(TransformJobRow).where(TransformJobRow.name == name)
        if if_attempt is not None:
            query = query.where(TransformJobRow.attempt == if_attempt)
        return bool(self.s.execute(query.values(**values)).rowcount)  # type: ignore[attr-defined]


class Store:
    """The database behind the control plane: SQLite (WAL) by default, PostgreSQL by URL."""

    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        self.url = url
        self.engine = engine or make_engine(url)
        self._sessions = session_factory(self.engine)

    def migrate(self) -> None:
        migrate(self.engine)

    @contextmanager
    def tx(self) -> Iterator[Repo]:
        session = self._sessions()
        try:
            yield Repo(session)
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            raise StoreError(f"store error: {exc}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def close(self) -> None:
        self.engine.dispose()
