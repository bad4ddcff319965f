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
    """Entries waiting, oldest first (an unreadable one is skipped until it can be read)."""
    try:
        names = [n for n in os.listdir(folder) if n.endswith(_SUFFIX)]
    except FileNotFoundError:
        return []
    found: list[tuple[float, Path, dict[str, Any]]] = []
    for name in names:
        path = folder / name
        with contextlib.suppress(OSError, ValueError):
            entry = json.loads(path.read_bytes())
            found.append((float(entry.get("received_at", 0.0)), path, entry))
    found.sort(key=lambda item: item[0])
    return [(path, entry) for _, path, entry in found[:limit]]


def peek(folder: Path, inference_id: str) -> dict[str, Any] | None:
    """The entry of one request, if it is still in the inbox."""
    with contextlib.suppress(OSError, ValueError):
        data: dict[str, Any] = json.loads((folder / f"{inference_id}{_SUFFIX}").read_bytes())
        return data
    return None


def done(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
