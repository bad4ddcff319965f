"""SageMaker Runtime's wire format: header names and error bodies that botocore understands."""

from __future__ import annotations

import orjson

H_TARGET_VARIANT = b"x-amzn-sagemaker-target-variant"
H_CUSTOM_ATTRIBUTES = b"x-amzn-sagemaker-custom-attributes"
H_INFERENCE_ID = b"x-amzn-sagemaker-inference-id"
H_INVOKED_VARIANT = b"x-amzn-invoked-production-variant"
H_ERROR_TYPE = b"x-amzn-errortype"
# InvokeEndpointAsync
H_INPUT_LOCATION = b"x-amzn-sagemaker-inputlocation"
H_ASYNC_CONTENT_TYPE = b"x-amzn-sagemaker-content-type"
H_ASYNC_ACCEPT = b"x-amzn-sagemaker-accept"
H_REQUEST_TTL = b"x-amzn-sagemaker-requestttlseconds"
H_INVOCATION_TIMEOUT = b"x-amzn-sagemaker-invocationtimeoutseconds"
H_OUTPUT_LOCATION = b"x-amzn-sagemaker-outputlocation"
H_FAILURE_LOCATION = b"x-amzn-sagemaker-failurelocation"
UNSUPPORTED_ASYNC = (b"x-amzn-sagemaker-s3outputpathextension", b"x-amzn-sagemaker-filename")

# botocore reads the error code from x-amzn-ErrorType and the message from the JSON body.
VALIDATION = "ValidationError"
MODEL_ERROR = "ModelError"
SERVICE_UNAVAILABLE = "ServiceUnavailable"
THROTTLING = "ThrottlingException"
INTERNAL_FAILURE = "InternalFailure"


def error_body(message: str, **extra: object) -> bytes:
    return orjson.dumps({"message": message, "Message": message, **extra})


def model_error_body(variant: str, status: int, original: bytes) -> bytes:
    """What botocore turns into ``ModelError``, carrying the model's own message."""
    text = original.decode("utf-8", "replace")
    try:
        parsed = orjson.loads(original)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            text = str(parsed["error"].get("message", text))
    except orjson.JSONDecodeError:
        pass
    message = f'Received client error ({status}) from {variant} with message "{text}".'
    if status >= 500:
        message = f'Received server error ({status}) from {variant} with message "{text}".'
    return error_body(message, OriginalStatusCode=status, OriginalMessage=text)


class GatewayError(Exception):
    """An answer the gateway gives instead of a replica's: its status, SageMaker error type and
    body; ``model_ms``: how long the replica took, when the error is its answer or its silence."""

    def __init__(
        self, status: int, error_type: str, body: bytes, model_ms: float | None = None
    ) -> None:
        self.status, self.error_type, self.body, self.model_ms = status, error_type, body, model_ms


def fail(status: int, error_type: str, message: str) -> GatewayError:
    return GatewayError(status, error_type, error_body(message))
