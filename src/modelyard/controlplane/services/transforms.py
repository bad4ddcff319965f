"""Transform jobs: checking and recording a new job, views for list/describe, stop, logs.

A job is checked before it is recorded, so that what can fail early fails with a clear error
and no work started: its model exists and its runtime is installed, every input file can be
opened (and decompressed), and the output location can be written.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from modelyard import storage
from modelyard.controlplane.reconcile.endpoints import tail_lines
from modelyard.controlplane.store.repo import TRANSFORM_ACTIVE, Repo, Store, TransformRecord
from modelyard.errors import ConflictError, MissingDependencyError, NotFoundError, SpecError
from modelyard.runtimes.registry import check_installed
from modelyard.spec import dump_spec
from modelyard.spec.resources import TransformJobDocument, TransformJobSpec
from modelyard.transform import source
from modelyard.transform.pipeline import failure_uri, output_uri

#: files checked one by one before a job is accepted (the rest are checked as they are read)
CHECK_FILES = 1000


def already_recorded(store: Store, doc: TransformJobDocument) -> bool:
    """Whether this very job (same name, same spec) was recorded before: applying it again is
    a no-op, not checked again (its input may be gone by now)."""
    with store.tx() as repo:
        existing = repo.get_transform(doc.name)
    return existing is not None and existing.spec == dump_spec(doc.spec)


def check_job(doc: TransformJobDocument, field: str) -> None:
    """What can be checked outside a transaction: the input and output locations."""
    spec = doc.spec
    if spec.input.content_type == "application/x-parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError("pyarrow", "parquet") from exc
    try:
        files = source.list_inputs(spec.input.uri)
    except MissingDependencyError:
        raise
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot read the input: {exc}", f"{field}.input.uri") from exc
    for file in files[:CHECK_FILES]:
        try:
            source.check_readable(file, spec.input)
        except Exception as exc:  # gzip, parquet and fsspec raise their own kinds
            raise SpecError(
                f"cannot read {file.uri} as {spec.input.content_type}"
                f"{' (gzip)' if spec.input.compression == 'gzip' else ''}: {exc}",
                f"{field}.input.uri",
            ) from exc
    _check_writable(spec.output.uri, f"{field}.output.uri")


def _check_writable(uri: str, field: str) -> None:
    """Write and remove a probe file under ``uri``; local folders made for it are removed too
    (a job refused later, or never run, leaves nothing behind; the job makes them again)."""
    made = None
    if storage.is_local(uri):
        folder = Path(storage.local_path(uri)).absolute()
        while not folder.exists() and folder.parent != folder:
            made, folder = folder, folder.parent
    probe = storage.join(uri, f".modelyard-probe-{uuid.uuid4().hex[:8]}")
    try:
        with storage.atomic_write(probe) as fh:
            fh.write(b"")
        storage.remove(probe)
    except MissingDependencyError:
        raise
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot write to the output location: {exc}", field) from exc
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


def record_job(repo: Repo, doc: TransformJobDocument, field: str, now: float) -> str:
    """Record a checked job in ``repo``'s transaction: created, or unchanged when the same
    job was submitted before (jobs are immutable: the same name with another spec is a
    conflict)."""
    spec = dump_spec(doc.spec)
    existing = repo.get_transform(doc.name)
    if existing is not None:
        if existing.spec == spec:
            return "unchanged"
        raise ConflictError(
            f"a transform job named {doc.name!r} already exists ({existing.status}) with another "
            "spec; jobs are kept as a record: run this one under a new name"
        )
    out = doc.spec.output.uri
    for other in repo.list_transforms(active_only=True):
        theirs = other.spec["output"]["uri"]
        if storage.within(out, [theirs]) or storage.within(theirs, [out]):
            raise ConflictError(
                f"{field}.output.uri: transform job {other.name!r} ({other.status}) writes to "
                f"{theirs}, which overlaps {out}: the two would overwrite each other's outputs; "
                "pick another output.uri, or wait for that job to end"
            )
    model = repo.get_model(doc.spec.model)
    if model is None:
        raise SpecError(f"no Model named {doc.spec.model!r}; apply it first", f"{field}.model")
    check_installed(model.spec["runtime"])
    repo.add_transform(doc.name, spec, model.spec, now)
    return "created"


def list_jobs(store: Store) -> list[dict[str, Any]]:
    with store.tx() as repo:
        return [_summary(job) for job in repo.list_transforms()]


def _summary(job: TransformRecord) -> dict[str, Any]:
    return {
        "kind": "TransformJob",
        "name": job.name,
        "status": job.status,
        "message": job.message,
        "model": job.spec["model"],
        "records_done": job.records_done,
        "records_failed": job.records_failed,
        "total_records": job.total_records,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
    }


def describe_job(store: Store, name: str, now: float) -> dict[str, Any]:
    with store.tx() as repo:
        job = repo.get_transform(name)
    if job is None:
        raise NotFoundError(f"no transform job named {name!r}")
    spec = TransformJobSpec.model_validate(job.spec)
    files = job.files or []
    finished = job.cursor.get("file", 0)
    out = _summary(job)
    elapsed = ((job.finished_at or now) - job.started_at) if job.started_at else 0.0
    processed = job.records_done + job.records_failed
    out.update(
        spec=job.spec,
        started_at=job.started_at,
        stop_requested=job.stop_requested,
        progress={
            "records_done": job.records_done,
            "records_failed": job.records_failed,
            "total_records": job.total_records,
            "files_done": min(finished, len(files)),
            "files_total": len(files) if job.files is not None else None,
        },
        summary={
            "records": job.records_done,
            "failures": job.records_failed,
            "duration_s": round(elapsed, 3),
            "records_per_s": round(processed / job.run_seconds, 1) if job.run_seconds else None,
        },
        failure_file=failure_uri(spec, name) if job.records_failed else None,
        outputs=[
            {
                "input": f["uri"],
                "output": output_uri(spec, source.InputFile(f["uri"], f["name"], f["size"])),
                "records": f["records"],
                "done": i < finished,
            }
            for i, f in enumerate(files[:100])
        ],
        replicas=[{"id": r["id"], "address": r["address"]} for r in job.replicas],
    )
    return out


def stop_job(store: Store, name: str) -> dict[str, Any]:
    """Ask a running job to stop: it stops sending, keeps the files it finished, and ends as
    Stopped. Stopping a job that already stopped is a no-op."""
    with store.tx() as repo:
        job = repo.get_transform(name)
        if job is None:
            raise NotFoundError(f"no transform job named {name!r}")
        if job.status == "Stopped" or job.status == "Stopping":
            return {"name": name, "status": job.status}
        if job.status not in TRANSFORM_ACTIVE:
            raise ConflictError(f"transform job {name!r} already ended ({job.status})")
        repo.update_transform(name, stop_requested=True, status="Stopping")
    return {"name": name, "status": "Stopping"}


def read_logs(store: Store, logs_dir: Path, name: str, tail: int) -> dict[str, Any]:
    """The job's own log and its replicas' logs: the last ``tail`` lines of each."""
    with store.tx() as repo:
        if repo.get_transform(name) is None:
            raise NotFoundError(f"no transform job named {name!r}")
    folder = logs_dir / "transform" / name
    files = sorted(folder.glob("*.log"), key=os.path.getmtime) if folder.is_dir() else []
    lines: list[str] = []
    for path in files:
        label = "job" if path.stem == "job" else path.stem
        lines += [f"[{label}] {line}" for line in tail_lines(path, tail)]
    return {"lines": lines}
