"""Resource specs (pydantic models), YAML loading and error translation."""

from modelyard.spec.alarms import AlarmDocument, AlarmSpec
from modelyard.spec.documents import load_documents, parse_document, parse_documents
from modelyard.spec.resources import (
    KINDS,
    RUNTIMES,
    AsyncSpec,
    BatchingSpec,
    ContainerSpec,
    Document,
    EndpointDocument,
    EndpointSpec,
    ModelDocument,
    ModelSpec,
    NotificationsSpec,
    ResourcesSpec,
    ServerlessSpec,
    VariantSpec,
    dump_spec,
)

__all__ = [
    "KINDS",
    "RUNTIMES",
    "AlarmDocument",
    "AlarmSpec",
    "AsyncSpec",
    "BatchingSpec",
    "ContainerSpec",
    "Document",
    "EndpointDocument",
    "EndpointSpec",
    "ModelDocument",
    "ModelSpec",
    "NotificationsSpec",
    "ResourcesSpec",
    "ServerlessSpec",
    "VariantSpec",
    "dump_spec",
    "load_documents",
    "parse_document",
    "parse_documents",
]
