"""Table rows. They never leave ``store/``: services get plain records from the repository."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ModelRow(Base):
    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class EndpointRow(Base):
    __tablename__ = "endpoints"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    status: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    #: the revision the controllers converge to
    target_revision: Mapped[int] = mapped_column(Integer)
    #: the revision the gateway routes to (None until the first one is ready)
    active_revision: Mapped[int | None] = mapped_column(Integer, nullable=True)
    deleting: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    #: the last time the endpoint had a request in progress (serverless and async scale on it)
    last_request_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: signs the endpoint's webhook notifications (HMAC-SHA256)
    webhook_secret: Mapped[str] = mapped_column(String(64), default="")


class RevisionRow(Base):
    """An immutable snapshot: the endpoint spec plus the specs of the models it names."""

    __tablename__ = "endpoint_revisions"
    __table_args__ = (UniqueConstraint("endpoint", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint: Mapped[str] = mapped_column(
        String(63), ForeignKey("endpoints.name", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    models: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)


class ReplicaRow(Base):
    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    endpoint: Mapped[str] = mapped_column(
        String(63), ForeignKey("endpoints.name", ondelete="CASCADE"), index=True
    )
    revision: Mapped[int] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16))
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pid_started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    address: Mapped[str | None] = mapped_column(String(255), nullable=True)
    log_path: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    ever_ready: Mapped[bool] = mapped_column(default=False)
    last_exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ready_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    next_start_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    stop_requested_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    signalled: Mapped[int] = mapped_column(Integer, default=0)


class EventRow(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint: Mapped[str] = mapped_column(String(63), index=True)
    at: Mapped[float] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text)


class CounterRow(Base):
    """Invocation counts per endpoint and variant, summed from the gateways' reports."""

    __tablename__ = "invocation_counters"

    endpoint: Mapped[str] = mapped_column(String(63), primary_key=True)
    variant: Mapped[str] = mapped_column(String(63), primary_key=True)
    invocations: Mapped[int] = mapped_column(Integer, default=0)
    errors_4xx: Mapped[int] = mapped_column(Integer, default=0)
    errors_5xx: Mapped[int] = mapped_column(Integer, default=0)
    last_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: requests that arrived with no replica running and were held while one started
    cold_starts: Mapped[int] = mapped_column(Integer, default=0)
    #: the time those requests were held, summed (milliseconds)
    cold_start_ms: Mapped[float] = mapped_column(Float, default=0.0)


class AsyncInvocationRow(Base):
    """One request to an async endpoint: the durable queue.

    ``queued → running → succeeded | failed``; ``running`` goes back to ``queued`` when its
    replica or its dispatcher dies. ``attempt`` fences a dispatch: only the dispatch that claimed
    the current attempt may finish it.
    """

    __tablename__ = "async_invocations"
    __table_args__ = (
        Index("ix_async_invocations_endpoint_state", "endpoint", "state"),
        Index("ix_async_invocations_state_expires_at", "state", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16))
    input_uri: Mapped[str] = mapped_column(Text)
    #: the gateway wrote the input (from the request body); it is removed once the request ends
    input_owned: Mapped[bool] = mapped_column(default=False)
    input_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    content_type: Mapped[str] = mapped_column(Text, default="")
    accept: Mapped[str] = mapped_column(Text, default="")
    custom_attributes: Mapped[str] = mapped_column(Text, default="")
    client_inference_id: Mapped[str] = mapped_column(Text, default="")
    output_location: Mapped[str] = mapped_column(Text)
    failure_location: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    #: this request's invocation timeout, when it set one (else the endpoint's)
    timeout_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: dispatches so far; only ever grows (it fences finishing: see Repo.update_async_if)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    #: dispatches that reached a replica which then went away (the request fails after 3)
    tries: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    replica_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    dispatcher: Mapped[str | None] = mapped_column(String(32), nullable=True)
    output_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")


class NotificationRow(Base):
    """A webhook to deliver (the outbox): written with the result it tells of, retried with
    backoff by the notifier until delivered or given up."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_state_next_at", "state", "next_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint: Mapped[str] = mapped_column(String(63), index=True)
    inference_id: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    #: the endpoint's (or alarm's) webhook secret when it was written (it outlives them)
    secret: Mapped[str] = mapped_column(String(64), default="")
    #: the alarm whose change of state this tells of ("" for an async request's result)
    alarm: Mapped[str] = mapped_column(String(63), default="")
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[float] = mapped_column(Float)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)


class TransformJobRow(Base):
    """A batch transform job and how far it got.

    ``cursor`` is the first record not yet committed: ``{file, start, line, out_bytes,
    finalizing}``; the output of the file being written has exactly ``out_bytes`` committed, and
    the failure file ``failure_bytes``. ``attempt`` fences a run: only the run that claimed the
    current attempt writes progress.
    """

    __tablename__ = "transform_jobs"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    message: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: the Model's spec when the job was created (a job runs what it was given)
    model: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    stop_requested: Mapped[bool] = mapped_column(default=False)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    #: ``[{uri, name, size, records}]``, listed and counted once when the job first runs
    files: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    total_records: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cursor: Mapped[dict[str, Any]] = mapped_column(JSON)
    failure_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    records_done: Mapped[int] = mapped_column(BigInteger, default=0)
    records_failed: Mapped[int] = mapped_column(BigInteger, default=0)
    #: the replicas the current run started: ``[{id, pid, started_at, address, log_path}]``
    replicas: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    #: seconds spent running, summed over runs (a resumed job's throughput counts only these)
    run_seconds: Mapped[float] = mapped_column(Float, default=0.0)


class MetricPointRow(Base):
    """One metric of one endpoint (variant, replica) over one interval: see metrics/series.py.
    ``variant`` and ``replica`` are "" for a point about the whole endpoint (or variant)."""

    __tablename__ = "metric_points"
    __table_args__ = (
        Index("ix_metric_points_endpoint_resolution_at", "endpoint", "resolution", "at"),
        Index("ix_metric_points_endpoint_metric_at", "endpoint", "metric", "at"),
    )

    metric: Mapped[str] = mapped_column(String(48), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(63), primary_key=True)
    variant: Mapped[str] = mapped_column(String(63), primary_key=True)
    replica: Mapped[str] = mapped_column(String(32), primary_key=True)
    resolution: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, primary_key=True)
    count: Mapped[float] = mapped_column(Float)
    sum: Mapped[float] = mapped_column(Float)
    min: Mapped[float | None] = mapped_column(Float, nullable=True)
    max: Mapped[float | None] = mapped_column(Float, nullable=True)
    buckets: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)


class AlarmRow(Base):
    """An alarm: its spec and its state (see alarms/evaluate.py). ``version`` grows with each
    change of the spec, so an evaluation made with an older spec is never recorded."""

    __tablename__ = "alarms"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(24))
    #: why it entered its state (the evaluation that moved it there)
    reason: Mapped[str] = mapped_column(Text, default="")
    state_since: Mapped[float] = mapped_column(Float)
    evaluated_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: what the latest evaluation found (its reason, whether or not the state changed)
    evaluation: Mapped[str] = mapped_column(Text, default="")
    #: signs the alarm's webhook notifications (HMAC-SHA256)
    webhook_secret: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class AlarmTransitionRow(Base):
    """An alarm's history: one row each time its state changed."""

    __tablename__ = "alarm_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alarm: Mapped[str] = mapped_column(String(63), index=True)
    at: Mapped[float] = mapped_column(Float)
    old_state: Mapped[str] = mapped_column(String(24))
    new_state: Mapped[str] = mapped_column(String(24))
    reason: Mapped[str] = mapped_column(Text)


class VariantCapacityRow(Base):
    """A variant's autoscaled capacity (see controlplane/autoscale/): the replicas the endpoint
    plan runs instead of ``instance_count`` while ``config`` is the variant's autoscaling spec.
    Written by the autoscaler only; kept across revisions that keep the variant and its
    autoscaling spec."""

    __tablename__ = "variant_capacities"

    endpoint: Mapped[str] = mapped_column(String(63), primary_key=True)
    variant: Mapped[str] = mapped_column(String(63), primary_key=True)
    #: the variant's autoscaling spec this capacity belongs to (another one resets it)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    capacity: Mapped[int] = mapped_column(Integer)
    #: the bounds in force (the spec's, or the latest scheduled action's)
    min: Mapped[int] = mapped_column(Integer)
    max: Mapped[int] = mapped_column(Integer)
    #: when ``config`` took effect: scheduled actions count from then on
    configured_at: Mapped[float] = mapped_column(Float)
    #: when the scheduled action in force fired (None: the spec's bounds)
    scheduled_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_scale_out_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_scaling_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)


class ScalingActivityRow(Base):
    """One change of a variant's capacity or bounds, and why."""

    __tablename__ = "scaling_activities"
    __table_args__ = (Index("ix_scaling_activities_endpoint_id", "endpoint", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint: Mapped[str] = mapped_column(String(63))
    variant: Mapped[str] = mapped_column(String(63))
    at: Mapped[float] = mapped_column(Float)
    from_capacity: Mapped[int] = mapped_column(Integer)
    to_capacity: Mapped[int] = mapped_column(Integer)
    cause: Mapped[str] = mapped_column(Text)
    #: what the decision saw: each policy's metric value and vote, bounds, cooldowns
    details: Mapped[dict[str, Any]] = mapped_column(JSON)


class DeploymentRow(Base):
    """One rollout of a revision (see controlplane/reconcile/rollout.py): where it stands while
    it runs, and who started it, what it changed and how it ended once it has."""

    __tablename__ = "deployments"
    __table_args__ = (Index("ix_deployments_endpoint_id", "endpoint", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint: Mapped[str] = mapped_column(String(63))
    #: the revision served before (None: the endpoint's creation)
    from_revision: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_revision: Mapped[int] = mapped_column(Integer)
    #: create | immediate | blue_green | rolling
    mode: Mapped[str] = mapped_column(String(16))
    #: the endpoint's deployment spec (empty: the default)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: InProgress | Succeeded | RolledBack | Failed | Aborted | Stopped
    status: Mapped[str] = mapped_column(String(16))
    phase: Mapped[str] = mapped_column(String(24))
    #: the green fleet's share of traffic after each step (set when traffic starts to move)
    steps: Mapped[list[float]] = mapped_column(JSON)
    step: Mapped[int] = mapped_column(Integer, default=-1)
    #: the share of traffic sent to the new revision now (blue/green before promotion)
    share: Mapped[float] = mapped_column(Float, default=0.0)
    step_started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: rolling back in batches: the share of the old capacity restored so far
    restored: Mapped[float] = mapped_column(Float, default=0.0)
    #: rolling back in batches: the share of the old capacity restored at once (1: all)
    rollback_batch: Mapped[float] = mapped_column(Float, default=1.0)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)
    #: who asked (the CLI sends the user's login name), and what changed
    by: Mapped[str] = mapped_column(String(128), default="")
    changes: Mapped[list[str]] = mapped_column(JSON)
    #: why it ended as it did (or is rolling back); the alarm that rolled it back
    reason: Mapped[str] = mapped_column(Text, default="")
    alarm: Mapped[str | None] = mapped_column(String(63), nullable=True)
    #: who asked to abort it (the controller rolls it back at its next pass)
    abort_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: what happened, step by step: [{"at", "message"}]
    log: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
