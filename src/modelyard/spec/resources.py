"""Resource specs: the one schema behind YAML files, API bodies and SDK calls."""

from __future__ import annotations

import posixpath
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="1-63 letters, digits and hyphens")]

# Runtimes known to the schema. Each maps to a plugin in modelyard.runtimes; the schema names them
# here so that validating a spec never imports an ML framework.
RUNTIMES = ("sklearn", "onnx", "python", "container")
RuntimeName = Literal["sklearn", "onnx", "python", "container"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ContainerSpec(_Spec):
    """Bring-your-own-container: a command that serves the replica contract on ``$PORT``."""

    command: list[str] = Field(
        min_length=1,
        description="argv of a program that serves GET /ping, POST /invocations on $PORT",
    )
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables")


class ModelSpec(_Spec):
    artifact: str | None = Field(
        default=None, description="fsspec URI (or path) of the model file or directory"
    )
    runtime: RuntimeName = Field(description="the framework adapter that serves the model")
    method: Literal["predict", "predict_proba"] | None = Field(
        default=None, description="scikit-learn: which estimator method answers (default predict)"
    )
    predictor: str | None = Field(
        default=None,
        description="python runtime: 'module:Class' importable from the artifact directory",
    )
    container: ContainerSpec | None = Field(
        default=None, description="bring-your-own-container: the command to run"
    )
    environment: dict[str, str] = Field(
        default_factory=dict, description="environment variables for the model's replicas"
    )

    @model_validator(mode="after")
    def _runtime_fields(self) -> ModelSpec:
        if self.runtime == "container":
            if self.container is None:
                raise ValueError("runtime 'container' needs container: {command: [...]}")
        elif self.container is not None:
            raise ValueError("container is only allowed with runtime 'container'")
        if self.runtime in ("sklearn", "onnx", "python") and not self.artifact:
            raise ValueError(f"runtime {self.runtime!r} needs an artifact URI")
        if self.runtime == "python":
            if not self.predictor or ":" not in self.predictor:
                raise ValueError("runtime 'python' needs predictor: 'module:Class'")
        elif self.predictor is not None:
            raise ValueError("predictor is only allowed with runtime 'python'")
        if self.method is not None and self.runtime != "sklearn":
            raise ValueError("method is only allowed with runtime 'sklearn'")
        return self


class ResourcesSpec(_Spec):
    cpus: float | None = Field(
        default=None, gt=0, le=1024, description="recorded with the revision; not enforced yet"
    )
    memory_mb: int | None = Field(
        default=None,
        ge=64,
        le=1_048_576,
        description="recorded with the revision; not enforced yet",
    )


class BatchingSpec(_Spec):
    """Adaptive batching: the replica gathers concurrent requests into one model call."""

    max_batch_size: int = Field(
        ge=1, le=1024, description="most rows in one model call (a request is never split)"
    )
    max_delay_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description="longest a request waits for others to join its batch",
    )


class VariantSpec(_Spec):
    name: Name = Field(description="unique within the endpoint")
    model: Name = Field(description="the Model this variant serves")
    instance_count: int = Field(
        default=1,
        ge=1,
        le=64,
        description="replicas to run (serverless: while it has traffic; async: while its queue "
        "has work)",
    )
    weight: float = Field(default=1.0, ge=0, description="share of traffic, relative to the others")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="per replica")
    startup_timeout_s: int = Field(
        default=240, ge=1, le=3600, description="seconds a new replica has to answer GET /ping"
    )
    batching: BatchingSpec | None = Field(
        default=None,
        description="adaptive batching in the replica (runtimes that can batch); off when absent",
    )


class ServerlessSpec(_Spec):
    """A serverless endpoint: replicas only while there is traffic."""

    memory_mb: int = Field(
        default=2048,
        ge=1024,
        le=6144,
        multiple_of=1024,
        description="memory of each replica, enforced: a replica over it is stopped (1024-6144, "
        "in steps of 1024)",
    )
    max_concurrency: int = Field(
        default=20,
        ge=1,
        le=200,
        description="invocations in progress at once; more are refused with 429 (throttled). "
        "With several gateway workers each admits its share, rounded up",
    )
    provisioned_concurrency: int = Field(
        default=0,
        ge=0,
        le=200,
        description="replicas of each variant kept warm while idle (0: scale to zero)",
    )
    idle_timeout_s: int = Field(
        default=300,
        ge=1,
        le=86400,
        description="seconds without a request before the endpoint scales in to its provisioned "
        "replicas",
    )

    @model_validator(mode="after")
    def _provisioned(self) -> ServerlessSpec:
        if self.provisioned_concurrency > self.max_concurrency:
            raise ValueError(
                f"provisioned_concurrency ({self.provisioned_concurrency}) must be at most "
                f"max_concurrency ({self.max_concurrency})"
            )
        return self


class NotificationsSpec(_Spec):
    success: list[AnyHttpUrl] = Field(
        default_factory=list, max_length=10, description="webhooks told of each result"
    )
    error: list[AnyHttpUrl] = Field(
        default_factory=list, max_length=10, description="webhooks told of each failure"
    )
    include_response_inline_max_kb: int = Field(
        default=0,
        ge=0,
        le=256,
        description="results up to this size (KB) are also sent in the success notification",
    )


class AsyncSpec(_Spec):
    """An asynchronous endpoint: a durable queue in front of the replicas."""

    output_uri: str | None = Field(
        default=None,
        description="where results go, as <id>.out (default: the server's state directory)",
    )
    failure_uri: str | None = Field(
        default=None, description="where failures go, as <id>.error (default: output_uri)"
    )
    input_locations: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="storage prefixes requests may name in X-Amzn-SageMaker-InputLocation, to "
        "read their payload from or store their body at (none by default: the payload comes "
        "as the request body)",
    )
    max_concurrent_invocations_per_instance: int = Field(
        default=4, ge=1, le=1000, description="requests each replica works on at once"
    )
    invocation_timeout_s: int = Field(
        default=900, ge=1, le=3600, description="longest one request may take on a replica"
    )
    request_ttl_s: int = Field(
        default=21600, ge=1, le=21600, description="a request still queued after this fails"
    )
    idle_timeout_s: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="seconds with an empty queue before the replicas scale to zero",
    )
    notifications: NotificationsSpec = Field(
        default_factory=NotificationsSpec, description="signed webhooks on success and error"
    )

    @field_validator("output_uri", "failure_uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a storage URI or path, not empty")
        return value

    @field_validator("input_locations")
    @classmethod
    def _prefixes(cls, values: list[str]) -> list[str]:
        for value in values:
            scheme, sep, rest = value.strip().partition("://")
            if sep and scheme.lower() in ("http", "https"):
                raise ValueError(f"{value!r}: web addresses cannot be input locations")
            local = not sep or scheme.lower() == "file"
            path = posixpath.normpath(rest if sep else scheme) if local else rest.strip("/")
            if local and not path.startswith("/"):
                raise ValueError(f"{value!r}: an absolute path (a relative one depends on cwd)")
            if path.strip("/") in ("", "."):
                raise ValueError(f"{value!r}: name a folder or prefix, not the whole filesystem")
        return values


class EndpointSpec(_Spec):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: Literal["realtime", "serverless", "async"] = Field(
        default="realtime", description="the endpoint type"
    )
    variants: list[VariantSpec] = Field(
        min_length=1, max_length=10, description="production variants sharing the traffic"
    )
    serverless: ServerlessSpec | None = Field(
        default=None, description="type serverless: memory, concurrency, scale to zero"
    )
    async_: AsyncSpec | None = Field(
        default=None,
        alias="async",
        description="type async: result locations, concurrency, timeouts, notifications",
    )

    @model_validator(mode="before")
    @classmethod
    def _type_defaults(cls, data: Any) -> Any:
        """A serverless or async endpoint without its block gets the block's defaults."""
        if isinstance(data, dict):
            kind = data.get("type")
            if kind == "serverless" and data.get("serverless") is None:
                data = {**data, "serverless": {}}
            if kind == "async" and data.get("async", data.get("async_")) is None:
                data = {**data, "async": {}}
        return data

    @field_validator("variants")
    @classmethod
    def _variants(cls, variants: list[VariantSpec]) -> list[VariantSpec]:
        names = [v.name for v in variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique; repeated: {', '.join(dupes)}")
        if sum(v.weight for v in variants) <= 0:
            raise ValueError("at least one variant needs a weight above 0")
        return variants

    @model_validator(mode="after")
    def _type_blocks(self) -> EndpointSpec:
        if self.serverless is not None and self.type != "serverless":
            raise ValueError("serverless is only allowed with type: serverless")
        if self.async_ is not None and self.type != "async":
            raise ValueError("async is only allowed with type: async")
        if self.type == "async" and len(self.variants) != 1:
            raise ValueError("an async endpoint has exactly one variant")
        if self.type == "serverless":
            for v in self.variants:
                if v.resources.memory_mb is not None:
                    raise ValueError(
                        f"variant {v.name!r}: a serverless endpoint sizes memory with "
                        "serverless.memory_mb, not resources.memory_mb"
                    )
        return self

    def variant(self, name: str) -> VariantSpec | None:
        return next((v for v in self.variants if v.name == name), None)


class ModelDocument(_Spec):
    kind: Literal["Model"]
    name: Name
    spec: ModelSpec


class EndpointDocument(_Spec):
    kind: Literal["Endpoint"]
    name: Name
    spec: EndpointSpec


Document = Annotated[ModelDocument | EndpointDocument, Field(discriminator="kind")]
KINDS = ("Model", "Endpoint")


def dump_spec(spec: BaseModel) -> dict[str, Any]:
    """The canonical JSON form of a spec, used for storage and change detection."""
    return spec.model_dump(mode="json", exclude_defaults=False, by_alias=True)
