"""Resource specs: the one schema behind YAML files, API bodies and SDK calls."""

from __future__ import annotations

import posixpath
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from modelyard.spec.alarms import AlarmDocument
from modelyard.spec.autoscaling import AutoscalingSpec, field_error
from modelyard.spec.base import Name, _Spec
from modelyard.spec.deployment import DeploymentSpec, ShadowSpec

# Runtimes known to the schema. Each maps to a plugin in modelyard.runtimes; the schema names them
# here so that validating a spec never imports an ML framework.
RUNTIMES = ("sklearn", "onnx", "python", "container")
RuntimeName = Literal["sklearn", "onnx", "python", "container"]


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
        description="replicas to run (with autoscaling: the initial capacity; serverless: while "
        "it has traffic; async: while its queue has work)",
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
    autoscaling: AutoscalingSpec | None = Field(
        default=None,
        description="replicas between min and max, moved by policies and schedules; "
        "instance_count is then the initial capacity (absent: always instance_count)",
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
    deployment: DeploymentSpec | None = Field(
        default=None,
        description="how a change that replaces replicas rolls out (absent: blue/green, all at "
        "once, as soon as the new fleet is ready)",
    )
    shadow: ShadowSpec | None = Field(
        default=None,
        description="type realtime: a variant that gets a copy of a share of the requests; its "
        "answers are measured and compared, never returned",
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
    def _variants(cls, variants: list[VariantSpec], info: ValidationInfo) -> list[VariantSpec]:
        names = [v.name for v in variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique; repeated: {', '.join(dupes)}")
        if sum(v.weight for v in variants) <= 0:
            raise ValueError("at least one variant needs a weight above 0")
        kind = info.data.get("type", "realtime")
        for i, variant in enumerate(variants):
            problem = variant.autoscaling.problem_for(kind) if variant.autoscaling else None
            if problem is not None:
                where, rule = problem
                raise field_error((i, "autoscaling", *where), rule)
        return variants

    @model_validator(mode="after")
    def _type_blocks(self) -> EndpointSpec:
        if self.serverless is not None and self.type != "serverless":
            raise ValueError("serverless is only allowed with type: serverless")
        if self.async_ is not None and self.type != "async":
            raise ValueError("async is only allowed with type: async")
        if self.type == "async" and len(self.variants) != 1:
            raise ValueError("an async endpoint has exactly one variant")
        if self.deployment is not None and self.type != "realtime":
            bg = self.deployment.blue_green
            if self.deployment.rolling is not None or (
                bg is not None and bg.traffic.type != "all_at_once"
            ):
                raise ValueError(
                    f"a {self.type} endpoint rolls out all at once: traffic shifting and "
                    "rolling updates need type: realtime"
                )
        if self.shadow is not None:
            if self.type != "realtime":
                raise ValueError("shadow variants need type: realtime")
            if self.variant(self.shadow.variant) is None:
                names = ", ".join(v.name for v in self.variants)
                raise field_error(
                    ("shadow", "variant"),
                    f"no variant named {self.shadow.variant!r} (variants: {names})",
                )
            if not any(v.weight > 0 for v in self.production_variants()):
                raise ValueError(
                    "the shadow variant takes no production traffic: another variant needs a "
                    "weight above 0"
                )
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

    def production_variants(self) -> list[VariantSpec]:
        """The variants that answer requests (all but the shadow)."""
        shadow = self.shadow.variant if self.shadow else None
        return [v for v in self.variants if v.name != shadow]


class ModelDocument(_Spec):
    kind: Literal["Model"]
    name: Name
    spec: ModelSpec


class EndpointDocument(_Spec):
    kind: Literal["Endpoint"]
    name: Name
    spec: EndpointSpec


# Batch transform ------------------------------------------------------------------------------

#: Input media types a transform job reads, and the media type each sends its records as.
TRANSFORM_CONTENT_TYPES = (
    "text/csv",
    "application/jsonlines",
    "application/json",
    "application/x-npy",
    "application/x-parquet",
)
TransformContentType = Literal[
    "text/csv",
    "application/jsonlines",
    "application/json",
    "application/x-npy",
    "application/x-parquet",
]


def _storage_uri(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a storage URI or path, not empty")
    scheme, sep, _ = value.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        raise ValueError(f"{value!r}: web addresses are not storage; use file://, s3:// and such")
    return value


class TransformInputSpec(_Spec):
    uri: str = Field(description="a file, or a folder or prefix whose files are all read")
    content_type: TransformContentType = Field(
        default="text/csv", description="the media type of the input files"
    )
    split_type: Literal["none", "line"] = Field(
        default="line",
        description="line: each line is a record; none: each file is one record",
    )
    compression: Literal["none", "gzip"] = Field(
        default="none", description="gzip: every input file is gzip-compressed"
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return _storage_uri(value)

    @model_validator(mode="after")
    def _split(self) -> TransformInputSpec:
        if self.content_type == "application/json" and self.split_type != "none":
            raise ValueError(
                "application/json input is one JSON document per file: split_type must be none "
                "(for one JSON value per line, use application/jsonlines)"
            )
        if self.content_type == "application/x-npy" and self.split_type != "none":
            raise ValueError(
                "application/x-npy input is one array per file: split_type must be none"
            )
        if self.content_type == "application/x-parquet":
            if self.split_type != "line":
                raise ValueError("parquet input is read by rows: split_type must be line")
            if self.compression != "none":
                raise ValueError("parquet compresses inside the file: compression must be none")
        return self


class TransformOutputSpec(_Spec):
    uri: str = Field(description="a folder or prefix; each input file's results go to <name>.out")
    accept: str | None = Field(
        default=None,
        description="the media type asked of the model (default: text/csv for CSV input, "
        "application/jsonlines for JSON lines and parquet, application/json otherwise)",
    )
    assemble_with: Literal["none", "line"] | None = Field(
        default=None,
        description="line: one output line per record (a JSON answer's predictions are split "
        "into one line each); none: the model's answers as they come, back to back (default: "
        "line when input.split_type is line)",
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return _storage_uri(value)


class DataProcessingSpec(_Spec):
    """Selecting what goes to the model and what is written, as SageMaker's DataProcessing."""

    input_filter: str | None = Field(
        default=None,
        description="JSONPath applied to each record before it is sent; CSV records are arrays of "
        "columns ('$[1:]' drops the first column)",
    )
    output_filter: str | None = Field(
        default=None,
        description="JSONPath applied to each written record (after join_source); CSV records "
        "are arrays of columns",
    )
    join_source: Literal["none", "input"] = Field(
        default="none",
        description="input: write each input record with its output (CSV: columns appended; "
        "JSON: the output under SageMakerOutput)",
    )

    @field_validator("input_filter", "output_filter")
    @classmethod
    def _jsonpath(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from jsonpath_ng.exceptions import JsonPathParserError  # only when a filter is given
        from jsonpath_ng.ext import parse  # type: ignore[attr-defined]

        try:
            parse(value)
        except (JsonPathParserError, Exception) as exc:  # the parser raises plain Exceptions too
            raise ValueError(f"{value!r} is not a JSONPath expression: {exc}") from exc
        return value


class ModelClientSpec(_Spec):
    timeout_s: int = Field(
        default=600, ge=1, le=3600, description="longest one mini-batch may take on a replica"
    )
    max_retries: int = Field(
        default=3, ge=0, le=3, description="tries again after a failed mini-batch before it fails"
    )


class TransformJobSpec(_Spec):
    model: Name = Field(description="the Model to run (its runtime, artifact and environment)")
    input: TransformInputSpec = Field(description="where the records come from")
    output: TransformOutputSpec = Field(description="where the results go")
    batch_strategy: Literal["single_record", "multi_record"] = Field(
        default="multi_record",
        description="multi_record: as many records per request as max_payload_mb allows",
    )
    max_payload_mb: int = Field(
        default=6, ge=1, le=100, description="the largest request body sent to the model (MB)"
    )
    max_concurrent_transforms: int = Field(
        default=1, ge=1, le=64, description="requests each replica works on at once"
    )
    instance_count: int = Field(
        default=1, ge=1, le=64, description="replicas started for the job (stopped after it)"
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="per replica")
    startup_timeout_s: int = Field(
        default=240, ge=1, le=3600, description="seconds a replica has to answer GET /ping"
    )
    data_processing: DataProcessingSpec = Field(
        default_factory=DataProcessingSpec, description="filters and joining with the input"
    )
    model_client: ModelClientSpec = Field(
        default_factory=ModelClientSpec, description="timeout and retries per mini-batch"
    )
    max_failed_records: int = Field(
        default=0,
        ge=0,
        description="records that may fail (in failed mini-batches) with the job still "
        "completing, as CompletedWithFailures; one more and it stops as Failed",
    )
    environment: dict[str, str] = Field(
        default_factory=dict, description="environment variables for the job's replicas"
    )

    @model_validator(mode="after")
    def _combinations(self) -> TransformJobSpec:
        dp = self.data_processing
        per_record = dp.input_filter or dp.output_filter or dp.join_source == "input"
        if per_record and self.input.split_type == "none":
            raise ValueError(
                "data_processing filters and join_source work on records: they need "
                "input.split_type line"
            )
        if per_record and self.output.assemble_with == "none":
            raise ValueError(
                "data_processing filters and join_source write one record a line: "
                "output.assemble_with must be line (or left out)"
            )
        accept = self.output_accept
        if per_record and accept not in ("text/csv", "application/jsonlines", "application/json"):
            raise ValueError(
                f"data_processing needs answers split into records: output.accept {accept!r} "
                "must be text/csv, application/jsonlines or application/json"
            )
        return self

    @property
    def output_accept(self) -> str:
        if self.output.accept:
            return self.output.accept
        return {
            "text/csv": "text/csv",
            "application/jsonlines": "application/jsonlines",
            "application/x-parquet": "application/jsonlines",
        }.get(self.input.content_type, "application/json")

    @property
    def assemble_lines(self) -> bool:
        if self.output.assemble_with is not None:
            return self.output.assemble_with == "line"
        return self.input.split_type == "line"


class TransformJobDocument(_Spec):
    kind: Literal["TransformJob"]
    name: Name
    spec: TransformJobSpec


Document = Annotated[
    ModelDocument | EndpointDocument | TransformJobDocument | AlarmDocument,
    Field(discriminator="kind"),
]
KINDS = ("Model", "Endpoint", "TransformJob", "Alarm")


def dump_spec(spec: BaseModel) -> dict[str, Any]:
    """The canonical JSON form of a spec, used for storage and change detection."""
    return spec.model_dump(mode="json", exclude_defaults=False, by_alias=True)
