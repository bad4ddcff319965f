"""Bundles: several invocations in one gateway-to-replica round trip.

Per request, HTTP between the gateway and a replica costs each side more CPU than a small model
call (parsing, a syscall each way, a response to format). When requests for one replica overlap,
the gateway sends them together as one ``POST /bundle`` to a Modelyard model server, which
answers each as if it had come alone (its own content type, Accept, custom attributes and
status), through the same adaptive batcher, and returns the answers together in the same order.
Bodies are carried as opaque bytes: nothing is parsed or re-serialised on the way. Replicas that
are bring-your-own containers only ever get plain ``/invocations``.

The wire format is binary and positional. A request bundle is a sequence of items::

    !IHHH  body length, content-type length, accept length, custom-attributes length
    content-type, accept, custom-attributes, body

and the answer a sequence of::

    !HIHH  status, body length, content-type length, custom-attributes length
    content-type, custom-attributes, body
"""

from __future__ import annotations

import struct

from modelyard.errors import InvalidInputError

CONTENT_TYPE = b"application/x-modelyard-bundle"
PATH = "/bundle"

_ITEM = struct.Struct("!IHHH")
#: The longest content type, Accept or custom attributes an item can carry (longer: send alone).
MAX_FIELD = 0xFFFF
_ANSWER = struct.Struct("!HIHH")


class Item:
    """One invocation in a bundle: the parts of the request a replica reads."""

    __slots__ = ("accept", "attrs", "body", "content_type")

    def __init__(self, content_type: bytes, accept: bytes, attrs: bytes, body: bytes) -> None:
        self.content_type = content_type
        self.accept = accept
        self.attrs = attrs
        self.body = body


class ItemAnswer:
    __slots__ = ("attrs", "body", "content_type", "status")

    def __init__(self, status: int, content_type: bytes, attrs: bytes, body: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self.attrs = attrs
        self.body = body


def encode_item(content_type: bytes, accept: bytes, attrs: bytes, body: bytes) -> bytes:
    head = _ITEM.pack(len(body), len(content_type), len(accept), len(attrs))
    return b"".join((head, content_type, accept, attrs, body))


def decode_items(data: bytes) -> list[Item]:
    """The items of a request bundle; InvalidInputError when it is not one."""
    items = []
    view = memoryview(data)
    pos, end = 0, len(data)
    try:
        while pos < end:
            n_body, n_type, n_accept, n_attrs = _ITEM.unpack_from(view, pos)
            pos += _ITEM.size
            fields = []
            for size in (n_type, n_accept, n_attrs, n_body):
                if pos + size > end:
                    raise InvalidInputError("bundle item runs past the end of the body")
                fields.append(bytes(view[pos : pos + size]))
                pos += size
            items.append(Item(*fields))
    except struct.error as exc:
        raise InvalidInputError(f"malformed bundle: {exc}") from exc
    return items


def encode_answer(status: int, content_type: bytes, attrs: bytes, body: bytes) -> bytes:
    head = _ANSWER.pack(status, len(body), len(content_type), len(attrs))
    return b"".join((head, content_type, attrs, body))


def decode_answers(data: bytes) -> list[ItemAnswer]:
    """The answers of a bundle, in order; ValueError when the data is not a bundle answer."""
    answers = []
    view = memoryview(data)
    pos, end = 0, len(data)
    try:
        while pos < end:
            status, n_body, n_type, n_attrs = _ANSWER.unpack_from(view, pos)
            pos += _ANSWER.size
            if pos + n_type + n_attrs + n_body > end:
                raise ValueError("bundle answer runs past the end of the body")
            content_type = bytes(view[pos : pos + n_type])
            pos += n_type
            attrs = bytes(view[pos : pos + n_attrs])
            pos += n_attrs
            answers.append(ItemAnswer(status, content_type, attrs, bytes(view[pos : pos + n_body])))
            pos += n_body
    except struct.error as exc:
        raise ValueError(f"malformed bundle answer: {exc}") from exc
    return answers
