"""SageMaker Runtime's wire format: header names and error bodies that botocore understands."""

from __future__ import annotations

import orjson

H_TARGET_VARIANT = b"x-amzn-sagemaker-target-variant"
H_CUSTOM_ATTRIBUTES = b"x-amzn-sagemaker-custom-attributes"
H_INFERENCE_ID = b"x-amzn-sagemaker-inference-id"
H_INVOKED_VARIANT = b"x-amzn-invoked-production-variant"
H_ERROR_TYPE = b"x-amzn-errortype"

# botocore reads the error code from x-amzn-ErrorType and the message from the JSON body.
VALIDATION = "ValidationError"
MODEL_ERROR = "ModelError"
SERVICE_UNAVAILABLE = "ServiceUnavailable"
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
