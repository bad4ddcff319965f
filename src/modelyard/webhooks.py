"""Signed webhooks: how Modelyard signs the notifications it sends, and how a receiver checks them.

Each notification carries ``X-Modelyard-Signature: t=<unix time>,v1=<hex>``, where ``<hex>`` is
HMAC-SHA256 of ``"<unix time>." + body`` under the endpoint's webhook secret (``modelyard describe``
shows it). A receiver recomputes it over the raw body it received and rejects a mismatch, or a
time too far from its own clock (a replayed notification)::

    from modelyard.webhooks import verify
    if not verify(secret, request.headers["X-Modelyard-Signature"], raw_body):
        return 401
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Modelyard-Signature"
#: How far a signature's time may be from the receiver's clock (seconds).
DEFAULT_TOLERANCE_S = 300.0


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The signature header value for ``body``."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def verify(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether ``header`` is a valid signature of ``body`` under ``secret``, made within
    ``tolerance_s`` of ``now``."""
    if not header:
        return False
    fields: dict[str, str] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, value)
    try:
        ts = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    expected = sign(secret, body, ts).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))
