"""The async queue's small parts: webhook signatures, the gateway's inbox, atomic result writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelyard import inbox, storage, webhooks
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
