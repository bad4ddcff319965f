"""The standby: a model-server interpreter started before it is needed, for fast cold starts.

Most of a replica's start-up is the interpreter's and the heavy imports' (numpy, scikit-learn,
the model server), not the model's load. The local executor keeps one standby that has done
those imports and waits; starting a replica then means handing it a model.

Run it as ``python -m modelyard.dataplane.standby`` with a pipe on stdin. Once its imports are
done it says ``modelyard-standby: pid N waiting`` on stderr and reads ONE line of JSON::

    {"argv": [...model server arguments...], "env": {...extra variables...}, "log_path": "..."}

and becomes that replica: its stdout and stderr go to ``log_path`` (appended), ``env`` is added
to its environment, its stdin becomes ``/dev/null`` (it no longer depends on whoever started
it), and it runs :func:`modelyard.dataplane.modelserver.main` with ``argv``. From then on it is
the replica, with the model server's exit statuses and SIGTERM drain. At end of input (the
control plane closed the pipe or died) it exits 0 without doing anything; on an assignment it
cannot read it exits 1, as a replica that could not start does.

Only launches whose environment need not be in place before numpy is imported may be handed to
a standby (no thread limits, no model environment): the executor decides.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass
from typing import BinaryIO

#: Imported while waiting. The model server and what unpickling common scikit-learn models
#: needs; ``sklearn`` itself (mostly SciPy) is the bulk of the time. Anything else, such as
#: onnxruntime (+~20 MB that every scikit-learn replica would then carry), loads on demand.
PRELOAD = (
    "modelyard.dataplane.modelserver",
    "modelyard.runtimes.sklearn",
    "modelyard.runtimes.python",
    "numpy",
    "joblib",
    "uvloop",
    "encodings.idna",
    "sklearn",
    "sklearn.linear_model",
    "sklearn.ensemble",
    "sklearn.tree",
    "sklearn.pipeline",
    "sklearn.preprocessing",
    "sklearn.compose",
    "sklearn.impute",
)

EXIT_BAD_ASSIGNMENT = 1  # the model server's "could not start": the supervisor may retry


@dataclass(frozen=True, slots=True)
class Assignment:
    argv: list[str]
    env: dict[str, str]
    log_path: str


def _say(line: str) -> None:
    print(f"modelyard-standby: {line}", file=sys.stderr, flush=True)


def preload(modules: tuple[str, ...] = PRELOAD) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # an optional one; the replica reports it if its model needs it
            _say(f"not preloaded: {name}: {exc}")


def read_assignment(stream: BinaryIO) -> Assignment | None:
    """The assignment on ``stream``; None at end of input. ValueError when it is not one."""
    line = stream.readline()
    if not line:
        return None
    try:
        document = json.loads(line)
        argv = document["argv"]
        env = document.get("env") or {}
        log_path = document["log_path"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not an assignment: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(argv, list) and isinstance(env, dict) and isinstance(log_path, str)):
        raise ValueError("not an assignment: argv must be a list, env an object, log_path text")
    return Assignment([str(a) for a in argv], {str(k): str(v) for k, v in env.items()}, log_path)


def become(assignment: Assignment) -> None:
    """Detach from the standby's plumbing: output to the replica's log, stdin from /dev/null."""
    log = os.open(assignment.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.environ.update(assignment.env)


def main() -> int:
    """Preload, wait for an assignment, then serve it. Returns the exit status."""
    preload()
    _say(f"pid {os.getpid()} waiting")
    try:
        assignment = read_assignment(sys.stdin.buffer)
    except ValueError as exc:
        _say(str(exc))
        return EXIT_BAD_ASSIGNMENT
    if assignment is None:  # whoever started us is gone, or no longer needs us
        return 0
    try:
        become(assignment)
    except OSError as exc:
        _say(f"cannot write to {assignment.log_path}: {exc}")
        return EXIT_BAD_ASSIGNMENT
    from modelyard.dataplane import modelserver

    return modelserver.main(assignment.argv)


if __name__ == "__main__":
    status = main()
    # As the model server's own entry point does: exit without joining the predict threads, so
    # that a model call stuck past the gateway's timeout cannot hold a draining replica.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
