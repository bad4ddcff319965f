"""Storage is a URI: artifacts and payloads are addressed through fsspec (file:// by default)."""

from __future__ import annotations

from typing import Any

from modelyard.errors import MissingDependencyError

_DRIVERS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs")}


def filesystem(uri: str) -> tuple[Any, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except ImportError as exc:
        protocol = uri.split("://", 1)[0]
        package, extra = _DRIVERS.get(protocol, (protocol + "fs", protocol))
        raise MissingDependencyError(package, extra) from exc
    except ValueError as exc:
        raise ValueError(f"unsupported storage URI {uri!r}: {exc}") from exc
    return fs, path


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return bool(fs.exists(path))


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri
