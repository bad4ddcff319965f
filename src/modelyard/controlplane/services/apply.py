"""Apply: create or update many resources at once, idempotently, all or nothing."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from modelyard import storage
from modelyard.controlplane.services import alarms, deployments, transforms
from modelyard.controlplane.store.repo import EndpointRecord, Repo, Store
from modelyard.errors import ConflictError, MissingDependencyError, NotFoundError, SpecError
from modelyard.runtimes.registry import check_installed
from modelyard.spec import Document, EndpointDocument, ModelDocument, ModelSpec, dump_spec
from modelyard.spec.alarms import AlarmDocument
from modelyard.spec.resources import TransformJobDocument, VariantSpec


@dataclass(frozen=True, slots=True)
class Applied:
    kind: str
    name: str
    action: str  # created | updated | unchanged
    revision: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "name": self.name, "action": self.action}
        if self.revision is not None:
            out["revision"] = self.revision
        return out


def check_model(spec: ModelSpec, field: str) -> None:
    """What can be checked before a replica starts: the runtime's package and the artifact."""
    check_installed(spec.runtime)
    if spec.artifact:
        try:
            found = storage.exists(spec.artifact)
        except MissingDependencyError:
            raise
        except (ValueError, OSError) as exc:
            raise SpecError(
                f"cannot read artifact {spec.artifact!r}: {exc}", f"{field}.artifact"
            ) from exc
        if not found:
            raise SpecError(f"no artifact at {spec.artifact!r}", f"{field}.artifact")


def _models_of(repo: Repo, spec: dict[str, Any]) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for variant in spec["variants"]:
        record = repo.get_model(variant["model"])
        assert record is not None  # checked before
        models[variant["model"]] = record.spec
    return models


def same_spec(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two stored endpoint specs are the same; a block stored as absent by an older
    version and as null by this one is the same (no new revision on upgrade)."""
    return {k: v for k, v in a.items() if v is not None} == {
        k: v for k, v in b.items() if v is not None
    }


def new_revision(
    repo: Repo, endpoint: EndpointRecord, spec: dict[str, Any], models: dict[str, Any], now: float
) -> int:
    number = repo.latest_revision_number(endpoint.name) + 1
    repo.add_revision(endpoint.name, number, spec, models, now)
    status = "Creating" if endpoint.active_revision is None else "Updating"
    repo.update_endpoint(endpoint.name, now, target_revision=number, status=status, message="")
    return number


def _revise(repo: Repo, name: str, spec: dict[str, Any], now: float, by: str) -> Applied:
    """Record a new revision when the endpoint spec or one of its models changed (or when the
    endpoint failed: applying again is how a user retries), and its deployment."""
    models = _models_of(repo, spec)
    endpoint = repo.get_endpoint(name)
    if endpoint is None:
        repo.create_endpoint(name, now, webhook_secret=secrets.token_hex(32))
        repo.add_revision(name, 1, spec, models, now)
        repo.update_endpoint(name, now, target_revision=1)
        repo.add_event(name, "created; revision 1", now)
        created = repo.get_endpoint(name)
        assert created is not None
        deployments.record(repo, created, 1, now, by)
        return Applied("Endpoint", name, "created", 1)
    if endpoint.deleting:
        raise ConflictError(f"endpoint {name!r} is being deleted; apply again once it is gone")
    current = repo.get_revision(name, endpoint.target_revision)
    failed = endpoint.status == "Failed"
    if current and same_spec(current.spec, spec) and current.models == models and not failed:
        return Applied("Endpoint", name, "unchanged", endpoint.target_revision)
    deployments.check_no_rollout(repo, name)
    number = new_revision(repo, endpoint, spec, models, now)
    repo.add_event(name, f"updated; revision {number}", now)
    deployments.record(repo, endpoint, number, now, by)
    return Applied("Endpoint", name, "updated", number)


def rollback_endpoint(
    store: Store, name: str, to_revision: int, now: float, by: str = ""
) -> Applied:
    """Roll out an earlier revision again, as a new revision with the same endpoint spec and the
    same model specs it had (revisions are immutable; history only grows)."""
    with store.tx() as repo:
        endpoint = repo.get_endpoint(name)
        if endpoint is None:
            raise NotFoundError(f"no endpoint named {name!r}")
        if endpoint.deleting:
            raise ConflictError(f"endpoint {name!r} is being deleted")
        old = repo.get_revision(name, to_revision)
        if old is None:
            known = ", ".join(str(r.number) for r in repo.list_revisions(name))
            raise NotFoundError(f"endpoint {name!r} has no revision {to_revision} (has: {known})")
        current = repo.get_revision(name, endpoint.target_revision)
        same = (
            current is not None
            and same_spec(current.spec, old.spec)
            and current.models == old.models
        )
        if same and endpoint.status != "Failed":
            return Applied("Endpoint", name, "unchanged", endpoint.target_revision)
        deployments.check_no_rollout(repo, name, "roll back")
        number = new_revision(repo, endpoint, old.spec, old.models, now)
        repo.add_event(name, f"rolling back to revision {to_revision} as revision {number}", now)
        deployments.record(repo, endpoint, number, now, by, f"rollback to revision {to_revision}")
        return Applied("Endpoint", name, "updated", number)


def _check_step_alarms(repo: Repo, variant: VariantSpec, batch: set[str], field: str) -> None:
    """A step policy's alarm exists, or comes in the same batch."""
    policies = variant.autoscaling.policies if variant.autoscaling else []
    for k, policy in enumerate(policies):
        if policy.step is None:
            continue
        name = policy.step.alarm
        if name not in batch and repo.get_alarm(name) is None:
            raise SpecError(
                f"no Alarm named {name!r}; apply it first or in the same file",
                f"{field}.autoscaling.policies[{k}].step.alarm",
            )


def _check_rollback_alarms(repo: Repo, doc: EndpointDocument, batch: set[str], field: str) -> None:
    """The alarms a deployment watches exist, or come in the same batch."""
    policy = doc.spec.deployment
    if policy is None or policy.auto_rollback is None:
        return
    for k, name in enumerate(policy.auto_rollback.alarms):
        if name not in batch and repo.get_alarm(name) is None:
            raise SpecError(
                f"no Alarm named {name!r}; apply it first or in the same file",
                f"{field}.deployment.auto_rollback.alarms[{k}]",
            )


def apply_documents(store: Store, docs: list[Document], now: float, by: str = "") -> list[Applied]:
    """Validate every document against the store, then write them in one transaction."""
    for i, doc in enumerate(docs):
        if isinstance(doc, ModelDocument):
            check_model(doc.spec, f"documents[{i}].spec")
        elif isinstance(doc, TransformJobDocument) and not transforms.already_recorded(store, doc):
            transforms.check_job(doc, f"documents[{i}].spec")
    batch_models = {d.name: d.spec for d in docs if isinstance(d, ModelDocument)}
    batch_alarms = {d.name for d in docs if isinstance(d, AlarmDocument)}
    results: list[Applied] = []
    with store.tx() as repo:
        for i, doc in enumerate(docs):
            if isinstance(doc, EndpointDocument):
                _check_rollback_alarms(repo, doc, batch_alarms, f"documents[{i}].spec")
                for j, variant in enumerate(doc.spec.variants):
                    field = f"documents[{i}].spec.variants[{j}]"
                    _check_step_alarms(repo, variant, batch_alarms, field)
                    runtime = None
                    if variant.model in batch_models:
                        runtime = batch_models[variant.model].runtime
                    elif (record := repo.get_model(variant.model)) is not None:
                        runtime = record.spec.get("runtime")
                    else:
                        raise SpecError(
                            f"no Model named {variant.model!r}; apply it first or in the same file",
                            f"{field}.model",
                        )
                    if variant.batching is not None and runtime == "container":
                        raise SpecError(
                            f"model {variant.model!r} runs its own container, which batches (or "
                            "not) by itself; remove batching from this variant",
                            f"{field}.batching",
                        )
        changed_models: set[str] = set()
        for doc in docs:
            if isinstance(doc, ModelDocument):
                spec = dump_spec(doc.spec)
                old = repo.get_model(doc.name)
                if old is not None and old.spec == spec:
                    results.append(Applied("Model", doc.name, "unchanged"))
                    continue
                repo.put_model(doc.name, spec, now)
                changed_models.add(doc.name)
                results.append(Applied("Model", doc.name, "created" if old is None else "updated"))
        batch_endpoints = set()
        for doc in docs:
            if isinstance(doc, EndpointDocument):
                batch_endpoints.add(doc.name)
                results.append(_revise(repo, doc.name, dump_spec(doc.spec), now, by))
        # Endpoints not in this batch that run a changed model roll out the new model too.
        for endpoint in repo.list_endpoints():
            if endpoint.name in batch_endpoints or endpoint.deleting:
                continue
            rev = repo.get_revision(endpoint.name, endpoint.target_revision)
            if rev and changed_models & {v["model"] for v in rev.spec["variants"]}:
                results.append(_revise(repo, endpoint.name, rev.spec, now, by))
        # Transform jobs last: they may run a model of this batch (as it is now).
        for i, doc in enumerate(docs):
            if isinstance(doc, TransformJobDocument):
                action = transforms.record_job(repo, doc, f"documents[{i}].spec", now)
                results.append(Applied("TransformJob", doc.name, action))
        # Alarms need nothing else to exist: one on an endpoint without data is
        # INSUFFICIENT_DATA (or keeps its state, with treat_missing_data: ignore).
        for doc in docs:
            if isinstance(doc, AlarmDocument):
                results.append(Applied("Alarm", doc.name, alarms.record_alarm(repo, doc, now)))
    return results
