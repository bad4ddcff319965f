"""The async queue's small parts: webhook signatures, the gateway's inbox, atomic result writes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard import inbox, storage, webhooks
from modelyard.controlplane.reconcile.asyncq import AsyncQueue
from modelyard.controlplane.store.repo import Store
from modelyard.errors import SpecError
from modelyard.spec import parse_document


def test_a_signature_verifies_with_the_secret_and_body_it_was_made_with() -> None:
    header = webhooks.sign("s3cret", b'{"a":1}', timestamp=1000)
    assert webhooks.verify("s3cret", header, b'{"a":1}', now=1000)
    assert not webhooks.verify("other", header, b'{"a":1}', now=1000)
    assert not webhooks.verify("s3cret", header, b'{"a":2}', now=1000)
    assert not webhooks.verify("s3cret", None, b'{"a":1}', now=1000)
    assert not webhooks.verify("s3cret", "t=x,v1=y", b'{"a":1}', now=1000)


def test_an_old_signature_is_refused_as_a_replay() -> None:
    header = webhooks.sign("s3cret", b"{}", timestamp=1000)
    assert webhooks.verify("s3cret", header, b"{}", now=1000 + 299)
    assert not webhooks.verify("s3cret", header, b"{}", now=1000 + 301)


def test_inbox_entries_come_back_oldest_first_and_leave_once_done(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    inbox.put(folder, {"id": "b", "endpoint": "e", "received_at": 2.0})
    inbox.put(folder, {"id": "a", "endpoint": "e", "received_at": 1.0})
    os.utime(folder / "b.json", (2.0, 2.0))  # written second
    os.utime(folder / "a.json", (1.0, 1.0))
    (folder / ".c.tmp").write_text("{half")  # a write that never finished is not an entry
    assert [e["id"] for _, e in inbox.entries(folder, limit=1)] == ["a"]
    found = inbox.entries(folder)
    assert [e["id"] for _, e in found] == ["a", "b"]
    assert inbox.peek(folder, "b") == {"id": "b", "endpoint": "e", "received_at": 2.0}
    inbox.done(found[0][0])
    assert [e["id"] for _, e in inbox.entries(folder)] == ["b"]
    assert inbox.entries(tmp_path / "missing") == []
    inbox.set_aside(folder / "b.json")  # a malformed entry is moved out of the way
    assert inbox.entries(folder) == [] and (folder / "bad" / "b.json").exists()


def test_atomic_write_publishes_whole_files_only(tmp_path: Path) -> None:
    target = tmp_path / "out" / "x.out"
    uri = f"file://{target}"
    with storage.atomic_write(uri) as fh:
        fh.write(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError), storage.atomic_write(uri) as fh:
        fh.write(b"half of a second")
        raise RuntimeError("the writer died")
    assert target.read_bytes() == b"first"  # the broken write left nothing behind
    assert os.listdir(target.parent) == ["x.out"]
    with storage.atomic_write(uri) as fh:  # a retried write replaces the result
        fh.write(b"second")
    assert target.read_bytes() == b"second"
    storage.remove(uri)
    storage.remove(uri)  # removing what is gone is fine
    assert not target.exists()


@pytest.mark.parametrize(
    ("spec", "field", "rule"),
    [
        ({"type": "serverless", "serverless": {"memory_mb": 512}}, "serverless.memory_mb", "1024"),
        ({"type": "serverless", "serverless": {"memory_mb": 1500}}, "serverless.memory_mb", "1024"),
        ({"type": "serverless", "serverless": {"max_concurrency": 201}}, "max_concurrency", "200"),
        (
            {"type": "serverless", "serverless": {"provisioned_concurrency": 30}},
            "serverless",
            "at most max_concurrency",
        ),
        (
            {"type": "async", "async": {"invocation_timeout_s": 3601}},
            "invocation_timeout_s",
            "3600",
        ),
        (
            {"type": "async", "async": {"notifications": {"success": ["ftp://x"]}}},
            "success",
            "http",
        ),
        ({"type": "realtime", "async": {}}, "spec", "only allowed with type: async"),
        ({"type": "realtime", "serverless": {}}, "spec", "only allowed with type: serverless"),
    ],
)
def test_bad_serverless_and_async_specs_name_the_field_and_the_rule(
    spec: dict[str, object], field: str, rule: str
) -> None:
    doc = {
        "kind": "Endpoint",
        "name": "e",
        "spec": {**spec, "variants": [{"name": "v", "model": "m"}]},
    }
    with pytest.raises(SpecError) as info:
        parse_document(doc)
    assert field in str(info.value) and rule in str(info.value)


def test_an_async_endpoint_has_one_variant() -> None:
    variants = [{"name": "a", "model": "m"}, {"name": "b", "model": "m"}]
    doc = {"kind": "Endpoint", "name": "e", "spec": {"type": "async", "variants": variants}}
    with pytest.raises(SpecError, match="exactly one variant"):
        parse_document(doc)


def test_serverless_and_async_blocks_get_their_defaults() -> None:
    variants = [{"name": "v", "model": "m"}]
    doc = parse_document(
        {"kind": "Endpoint", "name": "e", "spec": {"type": "serverless", "variants": variants}}
    )
    assert doc.spec.serverless is not None and doc.spec.serverless.memory_mb == 2048
    doc = parse_document(
        {"kind": "Endpoint", "name": "e", "spec": {"type": "async", "variants": variants}}
    )
    assert doc.spec.async_ is not None and doc.spec.async_.invocation_timeout_s == 900


# -- the dispatcher's bookkeeping, on a real store (no replica needed) ----------------------------


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[AsyncQueue]:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    q = AsyncQueue(store, tmp_path / "inbox", state_dir=tmp_path)
    yield q
    q.close()
    store.close()


def _entry(tmp_path: Path, inference_id: str, endpoint: str) -> dict[str, object]:
    return {
        "id": inference_id,
        "endpoint": endpoint,
        "input_uri": str(tmp_path / "in.json"),
        "output_location": str(tmp_path / "out"),
        "failure_location": str(tmp_path / "out"),
        "received_at": 1.0,
    }


def test_a_request_for_an_endpoint_that_is_gone_fails_with_its_reason(
    queue: AsyncQueue, tmp_path: Path
) -> None:
    inbox.put(queue.inbox_dir, _entry(tmp_path, "r1", "gone"))
    inbox.put(queue.inbox_dir, {"id": "r2"})  # malformed: set aside, not blocking the rest
    assert queue.ingest() == 1
    with queue.store.tx() as repo:
        job = repo.get_async("r1")
    assert job is not None and job.state == "failed"
    assert job.message == "the endpoint was deleted before it ran"
    failure = json.loads((tmp_path / "out" / "r1.error").read_text())
    assert failure["failureReason"] == job.message
    assert inbox.entries(queue.inbox_dir) == []
    assert (queue.inbox_dir / "bad" / "r2.json").exists()
    assert queue.ingest() == 0  # nothing left to read


def test_running_requests_without_a_dispatch_are_put_back(queue: AsyncQueue) -> None:
    with queue.store.tx() as repo:
        repo.create_endpoint("e", 1.0)
        for inference_id, dispatcher in (("lost", "earlier"), ("stranded", queue.dispatcher_id)):
            repo.add_async(
                id=inference_id,
                endpoint="e",
                input_uri="x",
                output_location="x",
                failure_location="x",
                created_at=1.0,
                expires_at=1e12,
                state="running",
                attempt=1,
                dispatcher=dispatcher,
            )
    assert queue.recover() == 1  # a previous control plane's request
    queue.expire()  # this dispatcher's, whose outcome could not be recorded
    with queue.store.tx() as repo:
        # Attempts only grow. A control-plane restart costs no try; an outcome that could not
        # be recorded does (so one that never can be ends as a failure, not in a loop).
        for inference_id, tries in (("lost", 0), ("stranded", 1)):
            job = repo.get_async(inference_id)
            assert job is not None and job.state == "queued"
            assert (job.attempt, job.tries) == (1, tries)


def test_sweep_removes_what_crashed_writers_left_and_only_that(
    queue: AsyncQueue, tmp_path: Path
) -> None:
    spec = {"type": "async", "async": {}, "variants": []}
    with queue.store.tx() as repo:
        repo.create_endpoint("e", 1.0)
        repo.add_revision("e", 1, spec, {}, 1.0)
        repo.update_endpoint("e", 1.0, target_revision=1, active_revision=1)
        repo.add_async(
            id="pending",
            endpoint="e",
            input_uri="x",
            output_location="x",
            failure_location="x",
            created_at=1.0,
            expires_at=1e12,
        )
    inputs = tmp_path / "async" / "e" / "input"
    inputs.mkdir(parents=True)
    old = 1_000_000.0  # long ago
    for name in ("orphan", "pending", ".orphan.part", "fresh"):
        (inputs / name).write_bytes(b"x")
        if name != "fresh":
            os.utime(inputs / name, (old, old))
    queue.sweep()
    assert sorted(p.name for p in inputs.iterdir()) == ["fresh", "pending"]


def test_within_keeps_a_location_under_its_prefixes(tmp_path: Path) -> None:
    allowed = tmp_path / "in"
    (allowed / "sub").mkdir(parents=True)
    (tmp_path / "secret").write_text("x")
    os.symlink(tmp_path / "secret", allowed / "link")
    prefixes = [str(allowed), "s3://bucket/data"]
    assert storage.within(str(allowed / "sub" / "a.csv"), prefixes)
    assert storage.within(f"file://{allowed}/a.csv", prefixes)
    assert storage.within("s3://bucket/data/x.csv", prefixes)
    for outside in (
        str(tmp_path / "secret"),
        f"{allowed}/../secret",
        str(allowed / "link"),  # a link that leads out
        f"{allowed}-sibling/a.csv",
        "s3://bucket/database/x",
        "s3://bucket/data/../other",
        "memory://bucket/data/x.csv",
    ):
        assert not storage.within(outside, prefixes), outside


def test_open_read_refuses_links_and_what_is_not_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "real.csv").write_bytes(b"1,2\n")
    os.symlink(tmp_path / "real.csv", tmp_path / "link.csv")
    os.mkfifo(tmp_path / "pipe")
    with storage.open_read(str(tmp_path / "real.csv")) as fh:
        assert fh.read() == b"1,2\n"
    for refused in ("link.csv", "pipe", "missing.csv"):
        with pytest.raises(OSError):
            storage.open_read(str(tmp_path / refused))


def test_a_replica_stopped_on_purpose_costs_a_request_no_try(queue: AsyncQueue) -> None:
    with queue.store.tx() as repo:
        repo.create_endpoint("e", 1.0)
        repo.add_replica(id="up", endpoint="e", revision=1, variant="v", state="ready")
        repo.add_replica(id="going", endpoint="e", revision=1, variant="v", state="stopping")
    assert not queue._stopped_on_purpose("up")  # it crashed under the request: a try
    assert queue._stopped_on_purpose("going")  # scale-in, a new revision: no try
    assert queue._stopped_on_purpose("forgotten")  # already stopped and removed
