"""The store: schema migrations and the repository's reads and writes, on a SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from modelyard.controlplane.store.repo import Store
from modelyard.controlplane.store.rows import Base
from modelyard.errors import StoreError

SPEC = {"type": "realtime", "variants": [{"name": "v", "model": "m", "instance_count": 1}]}
MODELS = {"m": {"runtime": "sklearn", "artifact": "file:///m.joblib"}}


@pytest.fixture
def url(tmp_path: Path) -> str:
    """The database the schema checks run against (PostgreSQL can parametrize this later)."""
    return f"sqlite:///{tmp_path / 'schema.sqlite'}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    s.migrate()
    yield s
    s.close()


def _endpoint_with_everything(store: Store, name: str, now: float = 1.0) -> None:
    with store.tx() as repo:
        repo.create_endpoint(name, now)
        repo.add_revision(name, 1, SPEC, MODELS, now)
        repo.update_endpoint(name, now, target_revision=1)
        repo.add_replica(id=f"r-{name}", endpoint=name, revision=1, variant="v", state="starting")
        repo.add_event(name, "created", now)
        repo.add_counts(name, "v", 5, 1, 0, now)


# -- schema ------------------------------------------------------------------------------------


def migration_differences(url: str) -> list[object]:
    """What autogenerate would change between the migrated schema and the ORM metadata."""
    store = Store(url)
    try:
        store.migrate()
        with store.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        store.close()


def test_alembic_migration_matches_the_orm_metadata(url: str) -> None:
    assert migration_differences(url) == []


def test_migrate_twice_is_idempotent(url: str) -> None:
    store = Store(url)
    try:
        store.migrate()
        with store.tx() as repo:
            repo.put_model("m", MODELS["m"], 1.0)
        store.migrate()
        with store.tx() as repo:
            assert [m.name for m in repo.list_models()] == ["m"]
        tables = set(inspect(store.engine).get_table_names())
        assert tables >= set(Base.metadata.tables)
    finally:
        store.close()


def test_migrate_a_path_that_cannot_be_a_database_raises_store_error(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder.sqlite"
    folder.mkdir()
    store = Store(f"sqlite:///{folder}")
    try:
        with pytest.raises(StoreError, match="could not migrate"):
            store.migrate()
    finally:
        store.close()


# -- models ------------------------------------------------------------------------------------


def test_model_put_get_update_delete(store: Store) -> None:
    with store.tx() as repo:
        repo.put_model("b", {"runtime": "onnx"}, 1.0)
        repo.put_model("a", {"runtime": "sklearn"}, 1.0)
    with store.tx() as repo:
        assert [m.name for m in repo.list_models()] == ["a", "b"]
        repo.put_model("a", {"runtime": "python"}, 5.0)
    with store.tx() as repo:
        a = repo.get_model("a")
        assert a is not None
        assert (a.spec, a.created_at, a.updated_at) == ({"runtime": "python"}, 1.0, 5.0)
        repo.delete_model("a")
    with store.tx() as repo:
        assert repo.get_model("a") is None
        assert [m.name for m in repo.list_models()] == ["b"]


# -- endpoints, revisions, replicas ------------------------------------------------------------


def test_endpoint_and_revisions_round_trip(store: Store) -> None:
    with store.tx() as repo:
        repo.create_endpoint("e", 1.0)
        repo.add_revision("e", 1, SPEC, MODELS, 1.0)
        repo.add_revision("e", 2, {**SPEC, "type": "realtime"}, MODELS, 2.0)
        repo.update_endpoint("e", 3.0, target_revision=2, active_revision=1, status="Updating")
        repo.set_revision_state("e", 1, "active", "")
    with store.tx() as repo:
        endpoint = repo.get_endpoint("e")
        assert endpoint is not None
        assert (endpoint.status, endpoint.target_revision, endpoint.active_revision) == (
            "Updating",
            2,
            1,
        )
        assert endpoint.updated_at == 3.0
        assert repo.latest_revision_number("e") == 2
        rev = repo.get_revision("e", 1)
        assert rev is not None
        assert (rev.spec, rev.models, rev.state) == (SPEC, MODELS, "active")
        assert repo.get_revision("e", 9) is None
        assert repo.latest_revision_number("other") == 0


def test_update_of_a_missing_endpoint_or_replica_is_a_no_op(store: Store) -> None:
    with store.tx() as repo:
        repo.update_endpoint("ghost", 1.0, status="InService")
        repo.update_replica("ghost", state="ready")
        repo.set_revision_state("ghost", 1, "active", "")
    with store.tx() as repo:
        assert repo.list_endpoints() == []


def test_replica_defaults_and_updates(store: Store) -> None:
    _endpoint_with_everything(store, "e")
    with store.tx() as repo:
        (rep,) = repo.list_replicas("e")
        assert (rep.attempts, rep.restarts, rep.ever_ready, rep.signalled) == (0, 0, False, 0)
        repo.update_replica(rep.id, state="ready", ever_ready=True, pid=42, address="h:1")
    with store.tx() as repo:
        (rep,) = repo.list_replicas()
        assert (rep.state, rep.ever_ready, rep.pid, rep.address) == ("ready", True, 42, "h:1")
        repo.delete_replica(rep.id)
    with store.tx() as repo:
        assert repo.list_replicas() == []


def test_delete_endpoint_removes_revisions_replicas_events_and_counters(store: Store) -> None:
    _endpoint_with_everything(store, "gone")
    _endpoint_with_everything(store, "kept")
    with store.tx() as repo:
        repo.delete_endpoint("gone")
    with store.tx() as repo:
        assert repo.get_endpoint("gone") is None
        assert repo.list_revisions("gone") == []
        assert repo.list_replicas("gone") == []
        assert repo.list_events("gone") == []
        assert repo.list_counts("gone") == []
        # the other endpoint is untouched
        assert repo.get_endpoint("kept") is not None
        assert len(repo.list_revisions("kept")) == 1
        assert len(repo.list_replicas("kept")) == 1
        assert len(repo.list_events("kept")) == 1
        assert len(repo.list_counts("kept")) == 1


def test_events_come_oldest_first_and_limited_to_the_newest(store: Store) -> None:
    with store.tx() as repo:
        repo.create_endpoint("e", 0.0)
        for i in range(5):
            repo.add_event("e", f"event {i}", float(i))
    with store.tx() as repo:
        assert [e.message for e in repo.list_events("e", limit=3)] == [
            "event 2",
            "event 3",
            "event 4",
        ]


# -- counters ----------------------------------------------------------------------------------


def test_add_counts_accumulates(store: Store) -> None:
    with store.tx() as repo:
        repo.create_endpoint("e", 0.0)
    with store.tx() as repo:
        repo.add_counts("e", "blue", 10, 1, 2, 5.0)
    with store.tx() as repo:
        repo.add_counts("e", "blue", 3, 0, 1, 7.0)
        repo.add_counts("e", "green", 1, 0, 0, 7.0)
    with store.tx() as repo:
        blue, green = repo.list_counts("e")
        assert (blue.variant, blue.invocations, blue.errors_4xx, blue.errors_5xx) == (
            "blue",
            13,
            1,
            3,
        )
        assert blue.last_at == 7.0
        assert (green.variant, green.invocations) == ("green", 1)


def test_add_counts_for_an_unknown_endpoint_is_ignored(store: Store) -> None:
    with store.tx() as repo:
        repo.add_counts("deleted-meanwhile", "v", 10, 0, 0, 1.0)
    with store.tx() as repo:
        assert repo.list_counts() == []


# -- errors ------------------------------------------------------------------------------------


def test_duplicate_endpoint_raises_store_error_and_rolls_back(store: Store) -> None:
    with store.tx() as repo:
        repo.create_endpoint("e", 1.0)
    with pytest.raises(StoreError, match="UNIQUE"), store.tx() as repo:
        repo.put_model("written-before-the-error", {}, 1.0)
        repo.create_endpoint("e", 2.0)
    with store.tx() as repo:
        assert repo.get_model("written-before-the-error") is None
        assert len(repo.list_endpoints()) == 1


def test_duplicate_revision_number_raises_store_error_at_commit(store: Store) -> None:
    with store.tx() as repo:
        repo.create_endpoint("e", 1.0)
        repo.add_revision("e", 1, SPEC, MODELS, 1.0)
    with pytest.raises(StoreError) as info, store.tx() as repo:
        repo.add_revision("e", 1, SPEC, MODELS, 2.0)
    assert info.value.code == "store_error"
    assert info.value.http_status == 500


def test_replica_of_an_unknown_endpoint_violates_the_foreign_key(store: Store) -> None:
    with pytest.raises(StoreError, match="FOREIGN KEY"), store.tx() as repo:
        repo.add_replica(id="r-1", endpoint="nope", revision=1, variant="v", state="starting")


def test_errors_other_than_the_databases_pass_through_unchanged(store: Store) -> None:
    with pytest.raises(KeyError), store.tx() as repo:
        repo.put_model("m", {}, 1.0)
        raise KeyError("not a store problem")
    with store.tx() as repo:
        assert repo.get_model("m") is None


def test_in_memory_sqlite_keeps_data_between_transactions() -> None:
    store = Store("sqlite://")
    try:
        store.migrate()
        with store.tx() as repo:
            repo.put_model("m", {}, 1.0)
        with store.tx() as repo:
            assert repo.get_model("m") is not None
    finally:
        store.close()


def _queue(repo: object, inference_id: str, **values: object) -> None:
    fields: dict[str, object] = {
        "id": inference_id,
        "endpoint": "e",
        "input_uri": "file:///in",
        "output_location": "file:///out",
        "failure_location": "file:///out",
        "created_at": 1.0,
        "expires_at": 100.0,
    }
    assert repo.add_async(**{**fields, **values})  # type: ignore[attr-defined]


def test_an_async_request_is_claimed_and_finished_by_one_attempt_only(store: Store) -> None:
    with store.tx() as repo:
        repo.create_endpoint("e", 1.0)
        _queue(repo, "a")
        assert not repo.add_async(
            id="a",
            endpoint="e",
            input_uri="x",
            output_location="x",
            failure_location="x",
            created_at=1.0,
            expires_at=2.0,
        )  # the same inbox entry read twice adds nothing
    with store.tx() as repo:
        assert repo.update_async_if("a", "queued", 0, state="running", attempt=1)
        assert not repo.update_async_if("a", "queued", 0, state="running", attempt=1)
        assert not repo.update_async_if("a", "running", 0, state="succeeded")  # a stale attempt
        assert repo.update_async_if("a", "running", 1, state="succeeded", finished_at=5.0)
        assert repo.backlog() == {}
        assert repo.async_totals("e") == {"succeeded": 1}


def test_finished_async_requests_are_forgotten_after_their_retention(store: Store) -> None:
    with store.tx() as repo:
        repo.create_endpoint("e", 1.0)
        _queue(repo, "old", state="failed", finished_at=10.0)
        _queue(repo, "recent", state="succeeded", finished_at=50.0)
        _queue(repo, "waiting")
        repo.add_notification("e", "old", "http://x", "{}", "secret", 10.0)
        repo.update_notification(1, state="delivered")
    with store.tx() as repo:
        assert repo.purge_async(finished_before=20.0) == 1
    with store.tx() as repo:
        assert repo.get_async("old") is None
        assert repo.get_async("recent") is not None and repo.get_async("waiting") is not None
        assert repo.list_notifications("old") == []
        backlog = repo.backlog()["e"]
        assert (backlog.queued, backlog.running, backlog.oldest_queued_at) == (1, 0, 1.0)
