"""The endpoint controller: observe replicas through the executor, plan, apply.

Level-triggered: every tick re-reads the store, so a control plane that dies mid-way resumes where
it stopped. Executor calls happen outside database transactions (docs/LOCKING.md).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelyard.controlplane.autoscale.autoscaler import planned_capacities
from modelyard.controlplane.reconcile import rollout
from modelyard.controlplane.reconcile.plan import (
    NO_DIRECTIVES,
    Action,
    Activity,
    DeleteEndpoint,
    FailReplica,
    FleetReady,
    Forget,
    KillOverMemory,
    MarkExited,
    MarkReady,
    Observation,
    PlanSettings,
    Restart,
    Retag,
    SetEndpoint,
    Signal,
    StartNew,
    Stop,
    drain_grace_s,
    plan,
)
from modelyard.controlplane.store.repo import EndpointRecord, ReplicaRecord, Store
from modelyard.errors import ModelyardError
from modelyard.executors.base import Executor, ReplicaLaunch, ReplicaProcess
from modelyard.spec import ModelSpec

log = logging.getLogger("modelyard.controller")
OVER_MEMORY = "over its memory limit"
#: The loop's interval while a serverless replica starts with requests held for it.
HURRY_INTERVAL_S = 0.03
#: A serverless endpoint with a request this recent may have requests held (the gateway reports
#: held requests as activity every sync, and holds one for at most the invocation timeout).
HURRY_WINDOW_S = 60.0


def tail_lines(path: str | Path, count: int = 10) -> list[str]:
    """The last lines of a log file, read from its end (logs can be large)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            data = fh.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-count:]


def _log_line(path: str, line: str) -> None:
    """Add the platform's own line to a replica's log (what `logs` shows next to its output)."""
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except OSError as exc:
        log.warning("could not write to %s: %s", path, exc)


def _failure(revision: int, replicas: list[ReplicaRecord], actions: list[Action]) -> str:
    """Why a replica of ``revision`` failed for good (this tick, or before), or ""."""
    mine = {r.id: r for r in replicas if r.revision == revision}
    for action in actions:
        if isinstance(action, FailReplica) and action.replica_id in mine:
            return f"replica {action.replica_id} failed: {action.reason}"
        if isinstance(action, MarkExited) and action.permanent and action.replica_id in mine:
            return f"replica {action.replica_id} exited with status {action.exit_code}"
    for rep in mine.values():
        if rep.state == "failed":
            return f"replica {rep.id} failed: {rep.message}"
    return ""


def _proc(rep: ReplicaRecord) -> ReplicaProcess | None:
    if rep.pid is None or rep.address is None:
        return None
    return ReplicaProcess(pid=rep.pid, started_at=rep.pid_started_at or 0.0, address=rep.address)


class EndpointController:
    def __init__(
        self,
        store: Store,
        executor: Executor,
        logs_dir: Path,
        cfg: PlanSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.executor = executor
        self.logs_dir = logs_dir
        self.cfg = cfg
        self.clock = clock
        self.wake = threading.Event()
        #: serverless endpoints with a replica starting while requests are waiting for it: the
        #: loop looks at these again sooner than its interval
        self.hurry: set[str] = set()

    # one pass ------------------------------------------------------------------------------
    def tick(self, only: set[str] | None = None) -> None:
        """One pass over every endpoint (or over ``only`` those)."""
        with self.store.tx() as repo:
            endpoints = [e for e in repo.list_endpoints() if only is None or e.name in only]
            backlog = repo.backlog()
            types = {}
            for e in endpoints:
                rev = repo.get_revision(e.name, e.target_revision) if e.target_revision else None
                types[e.name] = rev.spec.get("type", "realtime") if rev else "realtime"
        # A spare, model-less interpreter makes serverless cold starts fast (executors that
        # have one); it is kept only while a serverless endpoint exists.
        if only is None:
            self.executor.set_standby(any(t == "serverless" for t in types.values()))
        for endpoint in endpoints:
            entry = backlog.get(endpoint.name)
            backlogged = entry.queued + entry.running if entry else 0
            try:
                self.reconcile(endpoint.name, backlogged, types[endpoint.name] == "serverless")
            except ModelyardError as exc:
                log.error("reconciling endpoint %s failed: %s", endpoint.name, exc)

    def reconcile(self, name: str, backlog: int = 0, serverless: bool = False) -> None:
        with self.store.tx() as repo:
            endpoint = repo.get_endpoint(name)
            if endpoint is None or endpoint.target_revision == 0:
                return
            revisions = {r.number: r for r in repo.list_revisions(name)}
            replicas = repo.list_replicas(name)
            records = {c.variant: c for c in repo.list_capacities(name)}
            dep = repo.active_deployment(name)
        target = revisions.get(endpoint.target_revision)
        capacity = planned_capacities(target.spec, records) if target else {}
        observed = {rep.id: self._observe(rep) for rep in replicas}
        activity = Activity(endpoint.last_request_at, backlog)
        now = self.clock()
        sizes = rollout.fleet_sizes(dep, revisions, records) if dep else rollout.Sizes()
        directives = rollout.directives(dep, sizes) if dep else NO_DIRECTIVES
        actions = plan(
            endpoint, revisions, replicas, observed, now, self.cfg, activity, capacity, directives
        )
        waiting = (
            serverless
            and endpoint.last_request_at is not None
            and now - endpoint.last_request_at < HURRY_WINDOW_S
        )
        if waiting and (
            any(r.state == "starting" for r in replicas)
            or any(isinstance(a, StartNew | Restart) for a in actions)
        ):
            self.hurry.add(name)
        else:
            self.hurry.discard(name)
        by_id = {r.id: r for r in replicas}
        for action in actions:
            self._apply(endpoint, by_id, action)
        if serverless and target is not None and endpoint.active_revision == target.number:
            self._serverless_activities(endpoint, target.spec, replicas, actions, now)
        if dep is not None:
            ready = any(isinstance(a, FleetReady) for a in actions)
            self._advance(name, dep.id, ready, sizes, _failure(dep.to_revision, replicas, actions))

    def _serverless_activities(
        self,
        endpoint: EndpointRecord,
        spec: dict[str, Any],
        replicas: list[ReplicaRecord],
        actions: list[Action],
        now: float,
    ) -> None:
        """A serverless variant's scale from and to zero (its own rule: requests in progress and
        ``idle_timeout_s``, plan.wanted_replicas) recorded as scaling activities, as the
        autoscaler records its decisions: `describe`, the API and the SDK show them alike."""
        stopping = {a.replica_id for a in actions if isinstance(a, Stop)}
        cfg = spec["serverless"]
        for variant in spec["variants"]:
            name = variant["name"]
            live = [
                r
                for r in replicas
                if r.revision == endpoint.active_revision
                and r.variant == name
                and r.state in ("starting", "ready", "crashed")
            ]
            started = sum(1 for a in actions if isinstance(a, StartNew) and a.variant == name)
            stopped = sum(1 for r in live if r.id in stopping)
            if not started and not stopped:
                continue
            before, after = len(live), len(live) + started - stopped
            if started:
                cause = (
                    "serverless: a request arrived with no replica running (cold start)"
                    if not live
                    else "serverless: requests in progress"
                )
            else:
                cause = f"serverless: no request for idle_timeout_s ({cfg['idle_timeout_s']} s)"
            details = {
                "provisioned_concurrency": cfg["provisioned_concurrency"],
                "idle_timeout_s": cfg["idle_timeout_s"],
                "last_request_at": endpoint.last_request_at,
            }
            with self.store.tx() as repo:
                if repo.get_endpoint(endpoint.name) is not None:
                    repo.add_scaling_activity(
                        endpoint.name, name, now, before, after, cause, details
                    )

    def _advance(
        self, name: str, dep_id: int, fleet_ready: bool, sizes: rollout.Sizes, failed: str = ""
    ) -> None:
        """Move the endpoint's deployment on from what this tick found (reconcile/rollout.py)."""
        now = self.clock()
        with self.store.tx() as repo:
            endpoint = repo.get_endpoint(name)
            dep = repo.get_deployment(dep_id)
            if endpoint is None or dep is None or not dep.active:
                return
            if endpoint.deleting:
                repo.update_deployment_if(
                    dep,
                    now,
                    "stopped: the endpoint is being deleted",
                    status="Stopped",
                    phase="",
                    finished_at=now,
                    reason="the endpoint was deleted",
                )
                return
            rev = repo.get_revision(name, dep.to_revision)
            policy = rollout.policy_of(dep)
            alarms = {}
            for alarm_name in policy.auto_rollback.alarms if policy.auto_rollback else []:
                alarm = repo.get_alarm(alarm_name)
                if alarm is not None:
                    alarms[alarm_name] = (alarm.state, alarm.reason)
        state = (rev.state, rev.message) if rev is not None else ("failed", "revision missing")
        facts = rollout.Facts(now, endpoint, fleet_ready, state, alarms, failed)
        step = rollout.advance(dep, facts, sizes)
        if step is None:
            return
        with self.store.tx() as repo:
            if not repo.update_deployment_if(dep, now, step.note, **step.values):
                return  # changed meanwhile (an abort): the next tick decides again
            if step.endpoint:
                repo.update_endpoint(name, now, **step.endpoint)
            for number, rev_state, message in step.revisions:
                repo.set_revision_state(name, number, rev_state, message)
            repo.add_event(name, f"rollout {dep.id}: {step.note}", now)
        self.wake.set()  # the plan acts on the new phase at once

    def _observe(self, rep: ReplicaRecord) -> Observation:
        proc = _proc(rep)
        if proc is None:
            return Observation(exit_code=-1, ready=False)
        if rep.state not in ("starting", "ready", "stopping"):
            return Observation(exit_code=self.executor.exit_code(proc), ready=False)
        code = self.executor.exit_code(proc)
        if code is not None:
            last = tail_lines(rep.log_path, 1)
            return Observation(exit_code=code, ready=False, last_log_line=last[-1] if last else "")
        ready = rep.state == "starting" and self.executor.ready(proc, 1.0)
        return Observation(exit_code=None, ready=ready, memory_mb=self.executor.memory_mb(proc))

    # applying ------------------------------------------------------------------------------
    def _apply(
        self,
        endpoint: EndpointRecord,
        replicas: dict[str, ReplicaRecord],
        action: Action,
    ) -> None:
        now = self.clock()
        name = endpoint.name
        rep = replicas.get(getattr(action, "replica_id", ""))
        match action:
            case MarkReady(replica_id):
                self._update(replica_id, state="ready", ever_ready=True, ready_at=now)
            case MarkExited(replica_id, code, permanent, restart_at):
                assert rep is not None
                detail = f"exited with status {code}"
                if rep.message.startswith(OVER_MEMORY):
                    detail += f" ({rep.message})"
                with self.store.tx() as repo:
                    repo.update_replica(
                        replica_id,
                        state="failed" if permanent else "crashed",
                        last_exit_code=code,
                        message=detail,
                        next_start_at=restart_at,
                    )
                    suffix = "" if permanent else f"; restarting in {restart_at - now:.0f} s"  # type: ignore[operator]
                    repo.add_event(name, f"replica {replica_id} {detail}{suffix}", now)
            case FailReplica(replica_id, reason):
                with self.store.tx() as repo:
                    repo.update_replica(replica_id, state="failed", message=reason)
                    repo.add_event(name, f"replica {replica_id} {reason}", now)
            case KillOverMemory(replica_id, used, limit):
                assert rep is not None
                reason = f"{OVER_MEMORY} ({used:.0f} MB > {limit} MB); killed"
                proc = _proc(rep)
                if proc is not None:
                    self.executor.signal(proc, "kill")
                _log_line(rep.log_path, f"modelyard: replica {replica_id} went {reason}")
                with self.store.tx() as repo:
                    repo.update_replica(replica_id, message=reason)
                    repo.add_event(name, f"replica {replica_id} went {reason}", now)
            case StartNew(revision, variant):
                self._start_new(name, revision, variant)
            case Restart(replica_id):
                assert rep is not None
                self._launch(rep.id, name, rep.revision, rep.variant, restart=True)
            case Stop(replica_id):
                self._update(replica_id, state="stopping", stop_requested_at=now, signalled=0)
            case Signal(replica_id, how):
                assert rep is not None
                proc = _proc(rep)
                if proc is not None:
                    self.executor.signal(proc, how)
                if rep.state == "stopping":
                    self._update(replica_id, signalled=rep.signalled + 1)
            case Forget(replica_id):
                with self.store.tx() as repo:
                    repo.delete_replica(replica_id)
            case Retag(replica_id, revision):
                self._update(replica_id, revision=revision)
            case SetEndpoint(status, message, active, target, revision_states):
                with self.store.tx() as repo:
                    changed = repo.update_endpoint_if_unchanged(
                        endpoint,
                        now,
                        status=status,
                        message=message,
                        active_revision=active,
                        target_revision=target,
                    )
                    if not changed:
                        return  # the user applied or deleted meanwhile: the next tick re-plans
                    for number, state, msg in revision_states:
                        repo.set_revision_state(name, number, state, msg)
                    if status != endpoint.status:
                        repo.add_event(
                            name, f"status {status}" + (f": {message}" if message else ""), now
                        )
            case DeleteEndpoint():
                with self.store.tx() as repo:
                    repo.delete_endpoint(name)

    def _update(self, replica_id: str, **values: object) -> None:
        with self.store.tx() as repo:
            repo.update_replica(replica_id, **values)

    def _start_new(self, endpoint: str, revision: int, variant: str) -> None:
        replica_id = "r-" + secrets.token_hex(4)
        log_path = self.logs_dir / endpoint / f"{replica_id}.log"
        with self.store.tx() as repo:
            repo.add_replica(
                id=replica_id,
                endpoint=endpoint,
                revision=revision,
                variant=variant,
                state="starting",
                log_path=str(log_path),
            )
        self._launch(replica_id, endpoint, revision, variant, restart=False)

    def _launch(
        self, replica_id: str, endpoint: str, revision: int, variant: str, *, restart: bool
    ) -> None:
        with self.store.tx() as repo:
            rev = repo.get_revision(endpoint, revision)
            rep = next(r for r in repo.list_replicas(endpoint) if r.id == replica_id)
        assert rev is not None
        vspec = next(v for v in rev.spec["variants"] if v["name"] == variant)
        model = ModelSpec.model_validate(rev.models[vspec["model"]])
        launch = ReplicaLaunch(
            replica_id=replica_id,
            endpoint=endpoint,
            variant=variant,
            model_name=vspec["model"],
            model=model,
            log_path=Path(rep.log_path),
            cpus=(vspec.get("resources") or {}).get("cpus"),
            batching=vspec.get("batching"),
            drain_grace_s=drain_grace_s(rev.spec),
        )
        now = self.clock()
        try:
            proc = self.executor.start(launch)
        except ModelyardError as exc:
            self._start_failed(rep, endpoint, revision, exc.message, now)
            return
        with self.store.tx() as repo:
            repo.update_replica(
                replica_id,
                state="starting",
                pid=proc.pid,
                pid_started_at=proc.started_at,
                address=proc.address,
                started_at=now,
                attempts=rep.attempts + 1,
                restarts=rep.restarts + (1 if restart else 0),
                next_start_at=None,
            )
            verb = "restarted" if restart else "started"
            repo.add_event(
                endpoint, f"replica {replica_id} ({variant}) {verb}, pid {proc.pid}", now
            )

    def _start_failed(
        self, rep: ReplicaRecord, endpoint: str, revision: int, reason: str, now: float
    ) -> None:
        """A replica of the served revision is retried with backoff (the endpoint needs it);
        one of a new revision fails it, since the same command would fail again."""
        with self.store.tx() as repo:
            record = repo.get_endpoint(endpoint)
            served = record is not None and record.active_revision == revision
            backoff = self.cfg.restart_backoff_s
            repo.update_replica(
                rep.id,
                state="crashed" if served else "failed",
                message=f"could not start: {reason}",
                attempts=rep.attempts + 1,
                next_start_at=now + backoff[min(rep.restarts, len(backoff) - 1)]
                if served
                else None,
                restarts=rep.restarts + (1 if served else 0),
            )
            repo.add_event(endpoint, f"replica {rep.id} could not start: {reason}", now)

    # the loop ------------------------------------------------------------------------------
    def run(self, stop: threading.Event, interval_s: float) -> None:
        next_full = 0.0
        woken = True
        while not stop.is_set():
            full = woken or time.monotonic() >= next_full or not self.hurry
            self.wake.clear()  # (a wake from now on makes the next wait return at once)
            try:
                if full:
                    next_full = time.monotonic() + interval_s
                    self.tick()
                else:  # between full passes, only the endpoints with requests held
                    self.tick(only=set(self.hurry))
            except Exception:  # keep the controller alive; the next tick retries
                log.exception("controller tick failed")
            woken = self.wake.wait(HURRY_INTERVAL_S if self.hurry else interval_s)

    def stop_all(self, timeout_s: float) -> None:
        """Server shutdown: drain every replica (desired state is kept for the next start)."""
        with self.store.tx() as repo:
            replicas = repo.list_replicas()
        procs = [(r, p) for r in replicas if (p := _proc(r)) is not None]
        for _, proc in procs:
            self.executor.signal(proc, "term")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self.executor.exit_code(p) is not None for _, p in procs):
                break
            self.wake.wait(0.05)
        for _, proc in procs:
            self.executor.signal(proc, "kill")
        with self.store.tx() as repo:
            for rep, _ in procs:
                repo.delete_replica(rep.id)
