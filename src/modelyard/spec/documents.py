"""Turning YAML text and JSON bodies into validated documents, with errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from modelyard.errors import SpecError
from modelyard.spec.resources import KINDS, Document, ModelDocument

_ADAPTER: TypeAdapter[Document] = TypeAdapter(Document)


def _loc_to_path(prefix: str, loc: tuple[Any, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in (
            "ModelDocument",
            "EndpointDocument",
            "TransformJobDocument",
            "AlarmDocument",
            "Model",
            "Endpoint",
            "TransformJob",
            "Alarm",
        ):
            continue  # discriminator branch names, not fields
        else:
            path += f".{part}" if path else str(part)
    return path


def spec_error_from(exc: ValidationError, prefix: str = "") -> SpecError:
    """The first validation problem as a SpecError naming its field and rule."""
    err = exc.errors()[0]
    field = _loc_to_path(prefix, tuple(err["loc"])) or prefix or None
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown field"
    elif err["type"] == "literal_error" and "expected" in (err.get("ctx") or {}):
        message = f"must be one of {err['ctx']['expected']} (got {err.get('input')!r})"
    return SpecError(message, field)


def parse_document(raw: Any, where: str = "") -> Document:
    """Validate one ``{kind, name, spec}`` mapping."""
    if not isinstance(raw, dict):
        raise SpecError("a document must be a mapping with kind, name and spec", where or None)
    kind = raw.get("kind")
    if kind not in KINDS:
        field = f"{where}.kind" if where else "kind"
        raise SpecError(f"must be one of {', '.join(KINDS)} (got {kind!r})", field)
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise spec_error_from(exc, where) from exc


def parse_documents(raws: list[Any]) -> list[Document]:
    docs = [parse_document(raw, f"documents[{i}]") for i, raw in enumerate(raws)]
    seen: set[tuple[str, str]] = set()
    for i, doc in enumerate(docs):
        key = (doc.kind, doc.name)
        if key in seen:
            raise SpecError(f"{doc.kind} {doc.name!r} appears twice", f"documents[{i}].name")
        seen.add(key)
    return docs


def _absolute_uri(uri: str, base_dir: Path) -> str:
    """Relative file paths in a file are relative to that file, as a user reads them."""
    if uri.startswith("file://"):
        path = uri[len("file://") :]
    elif "://" in uri:
        return uri
    else:
        path = uri
    resolved = Path(path).expanduser()
    if not resolved.is_absolute():
        resolved = (base_dir / resolved).resolve()
    # Not Path.as_uri(): fsspec takes file:// paths as they are, without percent-decoding.
    return "file://" + str(resolved)


def load_documents(text: str, base_dir: Path | None = None, source: str = "") -> list[Document]:
    """Parse a YAML stream of one or more ``---`` separated documents."""
    label = source or "input"
    try:
        raws = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{label} is not valid YAML{where}: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"{label} is not valid YAML: {exc}") from exc
    if not raws:
        raise SpecError(f"{label} holds no documents")
    if base_dir is not None:
        for raw in raws:
            spec = raw.get("spec") if isinstance(raw, dict) else None
            if raw.get("kind") == "Model" and isinstance(spec, dict):
                artifact = spec.get("artifact")
                if isinstance(artifact, str) and artifact:
                    spec["artifact"] = _absolute_uri(artifact, base_dir)
            if raw.get("kind") == "TransformJob" and isinstance(spec, dict):
                for part in ("input", "output"):
                    block = spec.get(part)
                    uri = block.get("uri") if isinstance(block, dict) else None
                    if isinstance(block, dict) and isinstance(uri, str) and uri.strip():
                        block["uri"] = _absolute_uri(uri, base_dir)
    return parse_documents(raws)


__all__ = ["ModelDocument", "load_documents", "parse_document", "parse_documents"]
