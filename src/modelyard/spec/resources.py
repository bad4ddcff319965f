"""Resource specs: the one schema behind YAML files, API bodies and SDK calls."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    instance_count: int = Field(default=1, ge=1, le=64, description="replicas to run")
    weight: float = Field(default=1.0, ge=0, description="share of traffic, relative to the others")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="per replica")
    startup_timeout_s: int = Field(
        default=240, ge=1, le=3600, description="seconds a new replica has to answer GET /ping"
    )
    batching: BatchingSpec | None = Field(
        default=None,
        description="adaptive batching in the replica (runtimes that can batch); off when absent",
    )


class EndpointSpec(_Spec):
    type: Literal["realtime"] = Field(default="realtime", description="the endpoint type")
    variants: list[VariantSpec] = Field(
        min_length=1, max_length=10, description="production variants sharing the traffic"
    )

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
    return spec.model_dump(mode="json", exclude_defaults=False)
