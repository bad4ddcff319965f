"""The async inbox: how the gateway hands an accepted async request to the control plane.

The gateway answers 202 only after the request's entry is on disk (written whole, fsynced and
renamed into place), so an accepted request survives a crash of either process and does not need
the control plane to be up. The control plane moves entries into the store's queue and then
removes them; an entry read twice is recognised by its id.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

INBOX = "async-inbox"
_SUFFIX = ".json"


def inbox_dir(run_dir: Path) -> Path:
    return run_dir / INBOX


def put(folder: Path, entry: dict[str, Any]) -> None:
    """Write one entry durably (blocking: the gateway calls it off its event loop)."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{entry['id']}{_SUFFIX}"
    tmp = folder / f".{entry['id']}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(json.dumps(entry).encode())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def entries(folder: Path, limit: int = 500) -> list[tuple[Path, dict[str, Any]]]:
    """Up to ``limit`` entries waiting, oldest first (only those are read; an unreadable one is
    skipped until it can be read)."""
    try:
        with os.scandir(folder) as scan:
            found = [
                (item.stat().st_mtime, Path(item.path))
                for item in scan
                if item.name.endswith(_SUFFIX) and item.is_file()
            ]
    except FileNotFoundError:
        return []
    found.sort()
    out: list[tuple[Path, dict[str, Any]]] = []
    for _, path in found[:limit]:
        with contextlib.suppress(OSError, ValueError):
            entry = json.loads(path.read_bytes())
            if isinstance(entry, dict):
                out.append((path, entry))
    return out


def set_aside(path: Path) -> None:
    """Move an entry that cannot be queued out of the way (into ``bad/``), for a person to see."""
    bad = path.parent / "bad"
    bad.mkdir(exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, bad / path.name)


def peek(folder: Path, inference_id: str) -> dict[str, Any] | None:
    """The entry of one request, if it is still in the inbox."""
    with contextlib.suppress(OSError, ValueError):
        data: dict[str, Any] = json.loads((folder / f"{inference_id}{_SUFFIX}").read_bytes())
        return data
    return None


def done(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
