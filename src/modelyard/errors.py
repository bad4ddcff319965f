"""The one exception tree of Modelyard.

::

    ModelyardError                      code                http
    ├── UserError                       user_error          400
    │   ├── SpecError                   spec_invalid        400   (carries the field path)
    │   ├── InvalidInputError           invalid_input       400
    │   ├── UnsupportedMediaError       unsupported_media   415
    │   ├── NotFoundError               not_found           404
    │   ├── ConflictError               conflict            409
    │   │   └── RolloutInProgressError  rollout_in_progress 409   (carries the rollout's id)
    │   ├── PayloadTooLargeError        payload_too_large   413
    │   ├── AuthError                   unauthorized        401
    │   ├── ThrottledError              throttled           429   (over a concurrency cap)
    │   └── MissingDependencyError      missing_dependency  400   (names the extra to install)
    └── PlatformError                   platform_error      500
        ├── ModelInvocationError        model_error         424   (the model raised)
        ├── RuntimeLoadError            runtime_load_error  500
        ├── ReplicaStartError           replica_start_error 500
        ├── CapacityError               no_capacity         503
        ├── InvocationTimeoutError      timeout             504
        └── StoreError                  store_error         500

Every error has a stable ``code`` and ``http_status``. The control plane renders them as
``{"error": {"code", "message", "field"?}}``; the client re-raises the same class from that body
(:func:`from_payload`).
"""

from __future__ import annotations

from typing import Any


class ModelyardError(Exception):
    code = "error"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_payload(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class UserError(ModelyardError):
    code = "user_error"
    http_status = 400


class SpecError(UserError):
    """A resource spec broke a rule; ``field`` is the dotted path of the offending field."""

    code = "spec_invalid"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.rule = message

    def to_payload(self) -> dict[str, Any]:
        payload = super().to_payload()
        if self.field:
            payload["error"]["field"] = self.field
        return payload


class InvalidInputError(UserError):
    code = "invalid_input"


class UnsupportedMediaError(UserError):
    code = "unsupported_media"
    http_status = 415


class NotFoundError(UserError):
    code = "not_found"
    http_status = 404


class ConflictError(UserError):
    code = "conflict"
    http_status = 409


class RolloutInProgressError(ConflictError):
    """A change refused while a rollout runs; ``rollout`` is the running one's id."""

    code = "rollout_in_progress"

    def __init__(self, message: str, rollout: int | None = None) -> None:
        super().__init__(message)
        self.rollout = rollout

    def to_payload(self) -> dict[str, Any]:
        payload = super().to_payload()
        payload["error"]["rollout"] = self.rollout
        return payload


class PayloadTooLargeError(UserError):
    code = "payload_too_large"
    http_status = 413


class AuthError(UserError):
    code = "unauthorized"
    http_status = 401


class ThrottledError(UserError):
    code = "throttled"
    http_status = 429


class MissingDependencyError(UserError):
    """An optional part is not installed; the message names the extra that brings it."""

    code = "missing_dependency"

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed; install it with: pip install 'modelyard[{extra}]'"
        )
        self.package = package
        self.extra = extra


class PlatformError(ModelyardError):
    code = "platform_error"
    http_status = 500


class ModelInvocationError(PlatformError):
    code = "model_error"
    http_status = 424


class RuntimeLoadError(PlatformError):
    code = "runtime_load_error"


class ReplicaStartError(PlatformError):
    code = "replica_start_error"


class CapacityError(PlatformError):
    code = "no_capacity"
    http_status = 503


class InvocationTimeoutError(PlatformError):
    code = "timeout"
    http_status = 504


class StoreError(PlatformError):
    code = "store_error"


def _all_subclasses(cls: type[ModelyardError]) -> list[type[ModelyardError]]:
    out: list[type[ModelyardError]] = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def from_payload(payload: Any, status: int) -> ModelyardError:
    """Rebuild the error a server rendered with :meth:`ModelyardError.to_payload`."""
    body = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(body, dict):
        return PlatformError(f"HTTP {status}: {payload!r}")
    code = body.get("code")
    message = str(body.get("message", ""))
    by_code = {cls.code: cls for cls in _all_subclasses(ModelyardError)}
    cls = by_code.get(code) if isinstance(code, str) else None
    if cls is SpecError:
        field = body.get("field")
        err = SpecError(message, None)
        err.field = field
        return err
    if cls is RolloutInProgressError:
        rollout = body.get("rollout")
        return RolloutInProgressError(message, rollout if isinstance(rollout, int) else None)
    if cls is MissingDependencyError:
        missing = MissingDependencyError.__new__(MissingDependencyError)
        ModelyardError.__init__(missing, message)
        missing.package = missing.extra = ""
        return missing
    if cls is None:
        cls = UserError if 400 <= status < 500 else PlatformError
    return cls(message)
