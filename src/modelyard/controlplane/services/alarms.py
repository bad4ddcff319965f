"""Alarms: recording them (from apply), reading their state and history, deleting them."""

from __future__ import annotations

import secrets
from typing import Any

from modelyard.controlplane.store.alarm_queries import AlarmRecord, AlarmTransitionRecord
from modelyard.controlplane.store.repo import Repo, Store
from modelyard.errors import NotFoundError
from modelyard.spec import dump_spec
from modelyard.spec.alarms import AlarmDocument, AlarmSpec

#: transitions shown by describe (the history endpoint pages through all of them)
RECENT = 10


def record_alarm(repo: Repo, doc: AlarmDocument, now: float) -> str:
    """Create or update an alarm: created, updated or unchanged. An update keeps the state, the
    history and the webhook secret; the evaluator re-evaluates it with its new spec."""
    return repo.put_alarm(doc.name, dump_spec(doc.spec), now, secrets.token_hex(32))


def _transition(t: AlarmTransitionRecord) -> dict[str, Any]:
    return {
        "id": t.id,
        "at": t.at,
        "old_state": t.old_state,
        "new_state": t.new_state,
        "reason": t.reason,
    }


def _summary(alarm: AlarmRecord) -> dict[str, Any]:
    spec = AlarmSpec.model_validate(alarm.spec)
    return {
        "name": alarm.name,
        "state": alarm.state,
        "reason": alarm.reason,
        "state_since": alarm.state_since,
        "evaluated_at": alarm.evaluated_at,
        "endpoint": spec.dimensions.endpoint,
        "variant": spec.dimensions.variant,
        "metric": spec.metric,
        "statistic": spec.statistic,
        "condition": spec.condition,
        "created_at": alarm.created_at,
        "updated_at": alarm.updated_at,
    }


def _get(repo: Repo, name: str) -> AlarmRecord:
    alarm = repo.get_alarm(name)
    if alarm is None:
        raise NotFoundError(f"no alarm named {name!r}")
    return alarm


def list_alarms(store: Store) -> list[dict[str, Any]]:
    with store.tx() as repo:
        return [_summary(alarm) for alarm in repo.list_alarms()]


def describe_alarm(store: Store, name: str) -> dict[str, Any]:
    """The alarm's spec, state (with why and since when), what the latest evaluation found, its
    webhook secret, recent transitions (newest first) and recent webhook deliveries."""
    with store.tx() as repo:
        alarm = _get(repo, name)
        history = repo.alarm_history(name, RECENT)
        deliveries = repo.alarm_deliveries(name, RECENT)
    return {
        **_summary(alarm),
        "spec": alarm.spec,
        "evaluation": alarm.evaluation,
        "webhook_secret": alarm.webhook_secret,
        "history": [_transition(t) for t in history],
        "deliveries": [
            {
                "url": d.url,
                "state": d.state,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "created_at": d.created_at,
            }
            for d in deliveries
        ],
    }


def alarm_history(store: Store, name: str, limit: int, before: int | None = None) -> dict[str, Any]:
    """Transitions newest first; ``next`` is the ``before`` of the next page (None when this
    page was not full)."""
    with store.tx() as repo:
        _get(repo, name)
        items = repo.alarm_history(name, limit, before)
    following = items[-1].id if items and len(items) == limit else None
    return {"items": [_transition(t) for t in items], "next": following}


def delete_alarm(store: Store, name: str) -> None:
    with store.tx() as repo:
        if not repo.delete_alarm(name):
            raise NotFoundError(f"no alarm named {name!r}")
