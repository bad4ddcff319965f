"""An async request's inbox entry, read from its headers (InvokeEndpointAsync's): bad headers
are refused before a byte of the payload is stored."""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

from modelyard import storage
from modelyard.dataplane import sagemaker as sm
from modelyard.dataplane.routing import EndpointRoute
from modelyard.dataplane.sagemaker import fail

_INFERENCE_ID = re.compile(rb"^[\x21-\x7e]{1,64}$")


def _text(value: bytes | None) -> str:
    return value.decode("latin-1") if value else ""


def async_entry(route: EndpointRoute, headers: dict[bytes, bytes]) -> dict[str, Any]:
    """The inbox entry of an async request, from its headers (checked here: bad ones are
    refused before any byte is stored)."""
    assert route.locations is not None
    for unsupported in sm.UNSUPPORTED_ASYNC:
        if unsupported in headers:
            raise fail(
                400,
                sm.VALIDATION,
                f"{unsupported.decode()} is not supported; results are named <id>.out "
                "under the endpoint's output_uri",
            )
    client_id = headers.get(sm.H_INFERENCE_ID, b"")
    if client_id and not _INFERENCE_ID.match(client_id):
        raise fail(
            400,
            sm.VALIDATION,
            "X-Amzn-SageMaker-Inference-Id: 1-64 printable characters, no spaces",
        )
    location = _text(headers.get(sm.H_INPUT_LOCATION))
    if location and not storage.within(location, route.input_prefixes):
        allowed = ", ".join(route.input_prefixes) or "none are set"
        raise fail(
            400,
            sm.VALIDATION,
            f"X-Amzn-SageMaker-InputLocation: {location} is not under the endpoint's "
            f"async.input_locations ({allowed}); send the payload as the request body, or "
            "add its location to input_locations",
        )
    if location and storage.is_local(location):
        # Checked as resolved; stored resolved: a link swapped in later is not followed.
        location = "file://" + os.path.realpath(storage.local_path(location))
    entry: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "endpoint": route.name,
        "content_type": _text(headers.get(sm.H_ASYNC_CONTENT_TYPE) or headers.get(b"content-type")),
        "accept": _text(headers.get(sm.H_ASYNC_ACCEPT) or headers.get(b"accept")),
        "custom_attributes": _text(headers.get(sm.H_CUSTOM_ATTRIBUTES)),
        "client_inference_id": _text(client_id),
        "output_location": route.locations["output"],
        "failure_location": route.locations["failure"],
        "input_uri": location,
    }
    for header, key, most in (
        (sm.H_REQUEST_TTL, "request_ttl_s", 21600),
        (sm.H_INVOCATION_TIMEOUT, "invocation_timeout_s", 3600),
    ):
        raw = headers.get(header)
        if raw is None:
            continue
        if not raw.isdigit() or not 1 <= int(raw) <= most:
            raise fail(
                400, sm.VALIDATION, f"{header.decode()}: a whole number of seconds, 1-{most}"
            )
        entry[key] = int(raw)
    return entry
