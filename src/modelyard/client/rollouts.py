"""Rollouts, the deployment history and weights changed in place, for :class:`~modelyard.Client`.

A deployment is recorded with every new revision of an endpoint (``mode``: create, immediate,
blue_green or rolling); while a blue/green or rolling one is ``InProgress`` it is "the rollout",
and an apply, rollback or weights change of that endpoint is refused with
:class:`~modelyard.errors.RolloutInProgressError` (409, its ``rollout`` is the running one's id).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from modelyard.client.patience import Patient
from modelyard.errors import NotFoundError, PlatformError

#: the statuses a deployment ends in (it changes no more)
ROLLOUT_FINAL = frozenset({"Succeeded", "RolledBack", "Aborted", "Failed", "Stopped"})


class RolloutsMixin:
    """The rollout methods of :class:`~modelyard.Client` (it provides ``_call``)."""

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        raise NotImplementedError  # Client's

    def rollout_status(self, name: str) -> dict[str, Any]:
        """The endpoint's running (or latest) rollout, the traffic split now and the watched
        alarms: ``{endpoint, status, active_revision, target_revision, rollout, traffic,
        alarms}``. ``rollout`` is None when the endpoint never had a deployment, else ``{id,
        from_revision, to_revision, mode, status, phase, by, changes, started_at, finished_at,
        duration_s, reason, alarm, policy, steps: [{share, state}], step, log: [{at, message}]}``
        and, while it runs, ``wait_s``/``wait_left_s`` (the baking timer) and
        ``max_execution_left_s``. ``traffic`` is ``[{revision, share, variants: [{name, share,
        replicas_ready}]}]``; ``alarms`` ``[{name, state, reason}]``."""
        return dict(self._call("GET", f"/api/v1/endpoints/{name}/rollout"))

    def abort_rollout(self, name: str) -> dict[str, Any]:
        """Ask for the running rollout to be rolled back (all traffic returns to the revision
        served before; it ends Aborted). Returns the rollout's view; follow it with
        :meth:`wait_rollout`. No rollout running is a :class:`~modelyard.errors.ConflictError`."""
        return dict(self._call("POST", f"/api/v1/endpoints/{name}/rollout/abort"))

    def resume_rollout(self, name: str) -> dict[str, Any]:
        """Deploy again the revision whose rollout was rolled back, aborted or failed, as a new
        revision through the deployment policy. Returns the new rollout's view."""
        return dict(self._call("POST", f"/api/v1/endpoints/{name}/rollout/resume"))

    def deployments(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        """The endpoint's deployments, newest first (each as ``rollout_status``'s ``rollout``):
        who changed what, when, and how it ended."""
        path = f"/api/v1/endpoints/{name}/deployments"
        return list(self._call("GET", path, params={"limit": limit})["deployments"])

    def update_weights_and_capacities(
        self, name: str, variants: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Change variants' ``weight`` and ``instance_count`` without replacing a replica
        (SageMaker's UpdateEndpointWeightsAndCapacities): ``variants`` is ``[{name, weight?,
        instance_count?}]``. Returns ``{endpoint, revision, action}`` (``updated``, with the
        ``rollout`` id, or ``unchanged``); the new revision is served once its replicas are
        ready (:meth:`wait_endpoint` with ``revision``)."""
        path = f"/api/v1/endpoints/{name}/weights-and-capacities"
        return dict(self._call("POST", path, json={"variants": variants}))

    def shadow_report(self, name: str, since_s: int = 900) -> dict[str, Any]:
        """Production against the shadow variant over the last ``since_s`` seconds:
        ``{production, shadow: {invocations, errors_4xx, errors_5xx, error_rate, latency_ms,
        model_latency_ms: {avg, p50, p90, p99}}, latency_delta_ms, agreement: {compared,
        agreed, rate}, copies_shed, ...}``."""
        path = f"/api/v1/endpoints/{name}/shadow"
        return dict(self._call("GET", path, params={"since": since_s}))

    def promote_shadow(self, name: str) -> dict[str, Any]:
        """Make the shadow variant the endpoint's production variant, as a new revision rolled
        out by its deployment policy: ``{endpoint, revision, rollout, variant}``."""
        return dict(self._call("POST", f"/api/v1/endpoints/{name}/shadow/promote"))

    def wait_rollout(
        self,
        name: str,
        *,
        rollout: int | None = None,
        timeout_s: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll :meth:`rollout_status` until the rollout ``rollout`` (by default the latest one
        when the wait starts) is no longer InProgress, calling ``on_progress`` with each view;
        returns the last one (its ``rollout`` is the one waited for, even once a newer one
        runs). An endpoint without any deployment returns at once (``rollout`` None).

        With no ``timeout_s`` it waits as long as the rollout runs (its ``max_execution_s``
        bounds the steps, and again a rollback in batches; a termination wait adds up to an
        hour), through a control-plane restart too (up to a minute unreachable); past
        ``timeout_s`` it raises :class:`~modelyard.errors.PlatformError` (the rollout goes on).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        patient = Patient()  # the rollout goes on after a control-plane restart: so does this
        while True:
            view = patient.call(lambda: self.rollout_status(name))
            dep = view["rollout"]
            if dep is None:
                return view
            rollout = dep["id"] if rollout is None else rollout
            if dep["id"] != rollout:
                view["rollout"] = dep = self._deployment(name, rollout)
            if on_progress:
                on_progress(view)
            if dep["status"] in ROLLOUT_FINAL:
                return view
            if deadline is not None and time.monotonic() > deadline:
                raise PlatformError(
                    f"rollout {rollout} of endpoint {name!r} is still {dep['status']} "
                    f"({dep['phase']}) after {timeout_s:g} s; it goes on: follow it with "
                    f"`modelyard rollout status {name} --watch`, or stop it with "
                    f"`modelyard rollout abort {name}`"
                )
            time.sleep(0.5)  # polling the control plane

    def _deployment(self, name: str, rollout: int) -> dict[str, Any]:
        for dep in self.deployments(name, limit=500):
            if dep["id"] == rollout:
                return dep
        raise NotFoundError(f"endpoint {name!r} has no rollout {rollout}")
