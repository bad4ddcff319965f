"""Alarms in the store: apply, the evaluator's ticks on a fake clock, transitions and history,
the webhooks they write (and the notifier signing them), delete, and migration 0005."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from modelyard import webhooks
from modelyard.alarms.evaluator import AlarmEvaluator
from modelyard.controlplane.reconcile.asyncq import Notifier
from modelyard.controlplane.services import alarms
from modelyard.controlplane.services.apply import apply_documents
from modelyard.controlplane.store import alarm_queries
from modelyard.controlplane.store.db import MIGRATIONS_DIR
from modelyard.controlplane.store.metric_queries import SeriesKey
from modelyard.controlplane.store.repo import Store
from modelyard.errors import NotFoundError
from modelyard.metrics.series import Point
from modelyard.spec import parse_documents

END = 1_800_000_000.0
HOOK_ALARM = "http://hooks.test/alarm"
HOOK_OK = "http://hooks.test/ok"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    s.migrate()
    yield s
    s.close()


def alarm_doc(name: str = "busy", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metric": "invocations",
        "dimensions": {"endpoint": "ep"},
        "statistic": "sum",
        "period_s": 10,
        "evaluation_periods": 1,
        "comparison": "greater_than",
        "threshold": 5,
        "treat_missing_data": "not_breaching",
        "actions": {"alarm": [HOOK_ALARM], "ok": [HOOK_OK]},
        **spec,
    }
    return {"kind": "Alarm", "name": name, "spec": body}


def apply(store: Store, *docs: dict[str, Any], now: float = END) -> list[str]:
    return [r.action for r in apply_documents(store, parse_documents(list(docs)), now)]


def invocations(store: Store, at: float, n: float, variant: str = "v") -> None:
    point = Point(at)
    point.add_events(n)
    with store.tx() as repo:
        repo.add_metric_points([(SeriesKey("invocations", "ep", variant, ""), 10, point)])


def notifications(store: Store) -> list[Any]:
    with store.tx() as repo:
        return repo.due_notifications(float("inf"), 100)


def test_apply_creates_an_alarm_waiting_for_data_and_is_idempotent(store: Store) -> None:
    assert apply(store, alarm_doc()) == ["created"]
    assert apply(store, alarm_doc()) == ["unchanged"]
    view = alarms.describe_alarm(store, "busy")
    assert view["state"] == "INSUFFICIENT_DATA"
    assert view["reason"] == "created: INSUFFICIENT_DATA until an evaluation finds otherwise"
    assert view["condition"] == "sum invocations > 5.0 for 1 of 1 periods of 10 s"
    assert (view["endpoint"], view["variant"]) == ("ep", None)
    assert len(view["webhook_secret"]) == 64
    assert view["history"] == [] and view["evaluated_at"] is None


def test_transitions_are_recorded_with_history_and_signed_webhooks(store: Store) -> None:
    apply(store, alarm_doc())
    secret = alarms.describe_alarm(store, "busy")["webhook_secret"]
    evaluator = AlarmEvaluator(store)
    invocations(store, END - 10, 9)
    assert evaluator.tick(END + 5) == 1
    view = alarms.describe_alarm(store, "busy")
    assert view["state"] == "ALARM"
    assert view["state_since"] == END + 5
    assert view["reason"] == (
        "1 of the last 1 period (10 s) had sum invocations > 5.0: 9.0 (1 needed for ALARM)"
    )
    (note,) = notifications(store)
    assert (note.url, note.alarm, note.endpoint, note.secret) == (HOOK_ALARM, "busy", "ep", secret)
    body = json.loads(note.body)
    assert {k: body[k] for k in ("alarm", "endpoint", "old_state", "new_state", "reason")} == {
        "alarm": "busy",
        "endpoint": "ep",
        "old_state": "INSUFFICIENT_DATA",
        "new_state": "ALARM",
        "reason": view["reason"],
    }
    assert body["time"].startswith("2027-01-15T08:00:05")  # END + 5, in UTC
    # Still breaching: no transition, no webhook; the evaluation is recorded all the same.
    invocations(store, END, 7)
    assert evaluator.tick(END + 15) == 0
    view = alarms.describe_alarm(store, "busy")
    assert (view["state"], view["state_since"], view["evaluated_at"]) == (
        "ALARM",
        END + 5,
        END + 15,
    )
    assert view["evaluation"].endswith(": 7.0 (1 needed for ALARM)")
    # Traffic stops: the period is missing, which counts as not breaching.
    assert evaluator.tick(END + 25) == 1
    view = alarms.describe_alarm(store, "busy")
    assert view["state"] == "OK"
    assert [(t["old_state"], t["new_state"]) for t in view["history"]] == [
        ("ALARM", "OK"),
        ("INSUFFICIENT_DATA", "ALARM"),
    ]
    assert [n.url for n in notifications(store)] == [HOOK_ALARM, HOOK_OK]


def test_an_alarm_on_one_variant_sees_that_variant_only(store: Store) -> None:
    apply(
        store,
        alarm_doc("all", threshold=10),
        alarm_doc("blue", threshold=10, dimensions={"endpoint": "ep", "variant": "blue"}),
    )
    invocations(store, END - 10, 6, variant="blue")
    invocations(store, END - 10, 6, variant="green")
    AlarmEvaluator(store).tick(END + 5)
    states = {a["name"]: a["state"] for a in alarms.list_alarms(store)}
    assert states == {"all": "ALARM", "blue": "OK"}  # 12 > 10 merged; 6 for blue alone


def test_a_changed_spec_keeps_state_and_history_and_an_older_evaluation_is_dropped(
    store: Store,
) -> None:
    apply(store, alarm_doc())
    evaluator = AlarmEvaluator(store)
    invocations(store, END - 10, 9)
    evaluator.tick(END + 5)
    with store.tx() as repo:
        seen = repo.get_alarm("busy")
    assert seen is not None and seen.state == "ALARM"
    assert apply(store, alarm_doc(threshold=50), now=END + 6) == ["updated"]
    view = alarms.describe_alarm(store, "busy")
    assert (view["state"], len(view["history"])) == ("ALARM", 1)
    assert view["condition"].startswith("sum invocations > 50.0")
    # An evaluation made from the alarm as read before the change is not recorded.
    with store.tx() as repo:
        assert repo.record_evaluation(seen, "OK", "stale", END + 7) is False
    assert alarms.describe_alarm(store, "busy")["state"] == "ALARM"
    # The next evaluation uses the new threshold: 9 is not > 50.
    assert evaluator.tick(END + 8) == 1
    assert alarms.describe_alarm(store, "busy")["state"] == "OK"


def test_ignore_keeps_the_state_when_there_is_no_data(store: Store) -> None:
    apply(store, alarm_doc(treat_missing_data="ignore"))
    evaluator = AlarmEvaluator(store)
    invocations(store, END - 10, 9)
    evaluator.tick(END + 5)
    assert evaluator.tick(END + 15) == 0
    view = alarms.describe_alarm(store, "busy")
    assert view["state"] == "ALARM"
    assert view["evaluation"].endswith("state kept (treat_missing_data: ignore)")


def test_history_pages_newest_first_and_is_trimmed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(alarm_queries, "HISTORY_KEPT", 3)
    apply(store, alarm_doc())
    evaluator = AlarmEvaluator(store)
    for i in range(5):  # ALARM, OK, ALARM, OK, ALARM: five transitions
        if i % 2 == 0:
            invocations(store, END + 20 * i - 10, 9)
        evaluator.tick(END + 20 * i + 5)
    page = alarms.alarm_history(store, "busy", limit=2)
    assert [t["new_state"] for t in page["items"]] == ["ALARM", "OK"]
    rest = alarms.alarm_history(store, "busy", limit=2, before=page["next"])
    assert [t["new_state"] for t in rest["items"]] == ["ALARM"]  # the 3 newest are kept
    assert rest["next"] is None


def test_delete_forgets_the_alarm_but_delivers_its_pending_webhooks(store: Store) -> None:
    apply(store, alarm_doc())
    invocations(store, END - 10, 9)
    AlarmEvaluator(store).tick(END + 5)
    alarms.delete_alarm(store, "busy")
    with pytest.raises(NotFoundError):
        alarms.describe_alarm(store, "busy")
    with pytest.raises(NotFoundError):
        alarms.delete_alarm(store, "busy")
    with store.tx() as repo:
        assert repo.alarm_history("busy") == []
    assert [n.alarm for n in notifications(store)] == ["busy"]
    assert apply(store, alarm_doc()) == ["created"]  # the name is free again, state afresh
    assert alarms.describe_alarm(store, "busy")["state"] == "INSUFFICIENT_DATA"


def test_the_notifier_signs_alarm_webhooks_with_the_alarm_secret(store: Store) -> None:
    apply(store, alarm_doc())
    secret = alarms.describe_alarm(store, "busy")["webhook_secret"]
    invocations(store, END - 10, 9)
    AlarmEvaluator(store).tick(END + 5)
    received: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(204)

    notifier = Notifier(store, clock=lambda: END + 6)
    notifier._http.close()
    notifier._http = httpx.Client(transport=httpx.MockTransport(receive))
    notifier.tick()
    notifier._pool.shutdown(wait=True)
    notifier.close()
    (request,) = received
    header = request.headers[webhooks.SIGNATURE_HEADER]
    assert webhooks.verify(secret, header, request.content)
    assert not webhooks.verify("another secret", header, request.content)
    assert json.loads(request.content)["new_state"] == "ALARM"
    assert alarms.describe_alarm(store, "busy")["deliveries"][0]["state"] == "delivered"


def test_migration_0005_adds_alarms_to_a_store_at_0004(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'old.sqlite'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    try:
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0004")
            conn.execute(
                text(
                    "INSERT INTO notifications (endpoint, inference_id, url, body, secret, state,"
                    " attempts, next_at, last_error, created_at) VALUES ('ep', 'id-1', 'http://x',"
                    " '{}', 's', 'pending', 0, 1.0, '', 1.0)"
                )
            )
        store.migrate()
        (note,) = notifications(store)
        assert (note.inference_id, note.alarm) == ("id-1", "")
        apply(store, alarm_doc())
        with store.engine.begin() as conn:  # and back down, and up again
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0004")
        store.migrate()
        assert alarms.list_alarms(store) == []
    finally:
        store.close()


def test_each_period_is_judged_once_in_order_and_only_once_its_points_are_written(
    store: Store,
) -> None:
    """The evaluator waits for the recorder (its watermark) and then judges every window it
    has not judged yet, in order: a 10 s period that breached is never skipped."""
    apply(store, alarm_doc())
    watermark = [END - 10]  # [END - 10, END) is not written yet
    evaluator = AlarmEvaluator(store, written_through=lambda: watermark[0])
    invocations(store, END - 20, 1)  # quiet
    assert evaluator.tick(END - 5) == 1  # INSUFFICIENT_DATA -> OK on [END - 20, END - 10)
    assert evaluator.tick(END + 5) == 0  # its newest window is not written: nothing judged
    invocations(store, END - 10, 9)  # the breach, written late
    invocations(store, END, 1)  # and quiet again after it
    watermark[0] = END + 10
    assert evaluator.tick(END + 15) == 1  # both windows, in order: -> ALARM, then -> OK
    history = alarms.alarm_history(store, "busy", 10)["items"]
    assert [(h["old_state"], h["new_state"]) for h in history][:2] == [
        ("ALARM", "OK"),
        ("OK", "ALARM"),
    ]
    assert evaluator.tick(END + 16) == 0  # judged: not again


def test_an_evaluation_of_a_deleted_alarm_does_not_land_on_a_namesake(store: Store) -> None:
    apply(store, alarm_doc())
    with store.tx() as repo:
        old = repo.get_alarm("busy")
        assert old is not None
        repo.delete_alarm("busy")
    apply(store, {**alarm_doc(), "spec": {**alarm_doc()["spec"], "threshold": 500}})
    with store.tx() as repo:
        assert not repo.record_evaluation(old, "ALARM", "from the old spec", END)
        fresh = repo.get_alarm("busy")
    assert fresh is not None and fresh.state == "INSUFFICIENT_DATA"
