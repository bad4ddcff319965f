"""The store against a real PostgreSQL server (psycopg 3): migrations, CRUD, schema drift."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from modelyard.controlplane.store.repo import Store
from modelyard.controlplane.store.rows import Base
from modelyard.errors import StoreError

pytestmark = pytest.mark.postgres

TABLES = {
    "models",
    "endpoints",
    "endpoint_revisions",
    "async_invocations",
    "notifications",
    "replicas",
    "events",
    "invocation_counters",
}


@pytest.fixture
def store(fresh_postgres_url: str) -> Iterator[Store]:
    s = Store(fresh_postgres_url)
    s.migrate()
    try:
        yield s
    finally:
        s.close()


def _head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from modelyard.controlplane.store.db import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def test_migrate_creates_schema_and_is_idempotent(fresh_postgres_url: str) -> None:
    store = Store(fresh_postgres_url)
    try:
        assert store.engine.dialect.name == "postgresql"
        assert store.engine.dialect.driver == "psycopg"
        store.migrate()
        store.migrate()  # a second run changes nothing and does not fail
        assert set(inspect(store.engine).get_table_names()) >= TABLES
        with store.engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars()
            assert versions.all() == [_head_revision()]
    finally:
        store.close()
    again = Store(fresh_postgres_url)  # a new process starting against a migrated database
    try:
        again.migrate()
        with again.tx() as repo:
            assert repo.list_models() == []
    finally:
        again.close()


def test_migrations_match_the_orm_rows(store: Store) -> None:
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(ctx, Base.metadata)
    assert diffs == []


def test_models_round_trip_json_and_update(store: Store) -> None:
    spec = {"runtime": "sklearn", "uri": "file:///m.joblib", "nested": {"a": [1, 2.5, None]}}
    with store.tx() as repo:
        repo.put_model("iris", spec, now=100.0)
    with store.tx() as repo:
        rec = repo.get_model("iris")
        assert rec is not None
        assert rec.spec == spec
        assert (rec.created_at, rec.updated_at) == (100.0, 100.0)
        repo.put_model("iris", {**spec, "uri": "file:///v2.joblib"}, now=200.5)
    with store.tx() as repo:
        rec = repo.get_model("iris")
        assert rec is not None
        assert rec.spec["uri"] == "file:///v2.joblib"
        assert (rec.created_at, rec.updated_at) == (100.0, 200.5)
        assert [m.name for m in repo.list_models()] == ["iris"]
        assert repo.get_model("missing") is None
        repo.delete_model("iris")
    with store.tx() as repo:
        assert repo.list_models() == []


def test_endpoints_and_revisions(store: Store) -> None:
    with store.tx() as repo:
        repo.create_endpoint("ep", now=1.0)
        repo.add_revision("ep", 1, {"variants": [{"name": "a"}]}, {"m": {"runtime": "onnx"}}, 1.0)
        repo.add_revision("ep", 2, {"variants": [{"name": "b"}]}, {}, 2.0)
        repo.update_endpoint("ep", 2.0, target_revision=2, status="Updating")
    with store.tx() as repo:
        ep = repo.get_endpoint("ep")
        assert ep is not None
        assert (ep.status, ep.target_revision, ep.active_revision, ep.deleting) == (
            "Updating",
            2,
            None,
            False,
        )
        revs = repo.list_revisions("ep")
        assert [r.number for r in revs] == [1, 2]
        assert revs[0].models == {"m": {"runtime": "onnx"}}
        assert revs[0].state == "pending"
        assert repo.latest_revision_number("ep") == 2
        repo.set_revision_state("ep", 2, "ready", "all replicas ready")
    with store.tx() as repo:
        rev = repo.get_revision("ep", 2)
        assert rev is not None
        assert (rev.state, rev.message) == ("ready", "all replicas ready")
        assert repo.get_revision("ep", 3) is None


def test_duplicate_endpoint_is_a_store_error_and_rolls_back(store: Store) -> None:
    with store.tx() as repo:
        repo.create_endpoint("dup", now=1.0)
    with pytest.raises(StoreError), store.tx() as repo:
        repo.put_model("side-effect", {}, now=1.0)
        repo.create_endpoint("dup", now=2.0)
    with store.tx() as repo:
        assert repo.get_model("side-effect") is None  # the whole transaction rolled back
        assert [e.name for e in repo.list_endpoints()] == ["dup"]


def test_replicas(store: Store) -> None:
    with store.tx() as repo:
        repo.create_endpoint("ep", now=1.0)
        repo.add_replica(id="r1", endpoint="ep", revision=1, variant="a")
        repo.add_replica(id="r2", endpoint="ep", revision=1, variant="b", state="starting")
    with store.tx() as repo:
        repo.update_replica(
            "r1", state="ready", pid=4242, address="127.0.0.1:9000", ready_at=3.5, ever_ready=True
        )
        repo.update_replica("nope", state="ready")  # unknown ids are ignored
    with store.tx() as repo:
        reps = repo.list_replicas("ep")
        assert [r.id for r in reps] == ["r1", "r2"]
        r1, r2 = reps
        assert (r1.state, r1.pid, r1.address, r1.ready_at, r1.ever_ready) == (
            "ready",
            4242,
            "127.0.0.1:9000",
            3.5,
            True,
        )
        assert (r2.state, r2.pid, r2.attempts, r2.signalled, r2.log_path) == (
            "starting",
            None,
            0,
            0,
            "",
        )
        assert len(repo.list_replicas()) == 2
        repo.delete_replica("r2")
    with store.tx() as repo:
        assert [r.id for r in repo.list_replicas()] == ["r1"]


def test_counts_accumulate(store: Store) -> None:
    with store.tx() as repo:
        repo.create_endpoint("ep", now=1.0)
    with store.tx() as repo:
        repo.add_counts("ep", "a", 10, 1, 2, now=5.0)
    with store.tx() as repo:
        repo.add_counts("ep", "a", 5, 0, 1, now=6.0)
        repo.add_counts("ep", "b", 3, 0, 0, now=6.0)
        repo.add_counts("gone", "a", 100, 0, 0, now=6.0)  # deleted endpoint: dropped
    with store.tx() as repo:
        counts = {(c.endpoint, c.variant): c for c in repo.list_counts()}
        assert set(counts) == {("ep", "a"), ("ep", "b")}
        a = counts[("ep", "a")]
        assert (a.invocations, a.errors_4xx, a.errors_5xx, a.last_at) == (15, 1, 3, 6.0)
        assert counts[("ep", "b")].invocations == 3


def _populate(store: Store, name: str) -> None:
    with store.tx() as repo:
        repo.create_endpoint(name, now=1.0)
        repo.add_revision(name, 1, {}, {}, 1.0)
        repo.add_replica(id=f"{name}-r1", endpoint=name, revision=1, variant="a")
        repo.add_event(name, "created", 1.0)
        repo.add_counts(name, "a", 1, 0, 0, now=1.0)


def test_delete_endpoint_removes_everything_it_owns(store: Store) -> None:
    _populate(store, "doomed")
    _populate(store, "kept")
    with store.tx() as repo:
        assert [e.message for e in repo.list_events("doomed")] == ["created"]
        repo.delete_endpoint("doomed")
    with store.tx() as repo:
        assert repo.get_endpoint("doomed") is None
        assert repo.list_revisions("doomed") == []
        assert repo.list_replicas("doomed") == []
        assert repo.list_events("doomed") == []
        assert repo.list_counts("doomed") == []
        # the other endpoint is untouched
        assert repo.get_endpoint("kept") is not None
        assert len(repo.list_revisions("kept")) == 1
        assert len(repo.list_replicas("kept")) == 1
        assert len(repo.list_counts("kept")) == 1


def test_foreign_keys_cascade_in_the_database(store: Store) -> None:
    """The migration's ON DELETE CASCADE holds even for a delete that bypasses the repository."""
    _populate(store, "raw")
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM endpoints WHERE name = 'raw'"))
    with store.tx() as repo:
        assert repo.list_revisions("raw") == []
        assert repo.list_replicas("raw") == []
