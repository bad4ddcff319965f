"""Storage is a URI: artifacts and payloads are addressed through fsspec (file:// by default)."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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


def join(uri: str, name: str) -> str:
    """``uri/name``: a file under a prefix (a folder, or an object-store prefix)."""
    return uri.rstrip("/") + "/" + name


def open_read(uri: str) -> Any:
    """A binary file object to read ``uri`` in chunks (never the whole thing at once). A local
    path must be a regular file (not a pipe or a device, which could block a reader forever)."""
    if is_local(uri):
        path = local_path(uri)
        if os.path.realpath(path) != os.path.abspath(path):
            raise FileNotFoundError(f"{path} is (or is under) a symbolic link; name its target")
        # Non-blocking, so that opening a pipe does not wait for a writer; then checked.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileNotFoundError(f"no regular file at {path}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    fs, path = filesystem(uri)
    return fs.open(path, "rb")


def within(uri: str, prefixes: list[str]) -> bool:
    """Whether ``uri`` lies under one of ``prefixes`` (local paths compared after resolving
    ``..`` and symbolic links; other URIs by prefix, a whole path segment at a time)."""
    if is_local(uri):
        path = os.path.realpath(local_path(uri))
        for prefix in prefixes:
            if is_local(prefix):
                root = os.path.realpath(local_path(prefix))
                if os.path.commonpath([path, root]) == root:
                    return True
        return False
    if "/../" in uri or uri.endswith("/.."):
        return False
    for prefix in prefixes:
        if is_local(prefix):
            continue
        root = prefix.rstrip("/")
        if uri == root or uri.startswith(root + "/"):
            return True
    return False


@contextmanager
def atomic_write(uri: str) -> Iterator[Any]:
    """A binary file object whose content appears at ``uri`` only when the block ends without an
    error, whole: a local file is written beside its place and renamed over it; an object store
    publishes an object when its upload completes. Writing the same ``uri`` again replaces it, so
    a retried write leaves one result."""
    if is_local(uri):
        target = Path(local_path(uri))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return
    fs, path = filesystem(uri)
    fh = fs.open(path, "wb")
    try:
        yield fh
    except BaseException:
        # An object store publishes an object when its upload is closed: abort it instead.
        discard = getattr(fh, "discard", None)
        if discard is not None:
            discard()
        else:
            fh.close()
        raise
    fh.close()


def remove(uri: str) -> None:
    """Delete ``uri`` if it exists."""
    if is_local(uri):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local_path(uri))
        return
    fs, path = filesystem(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)
