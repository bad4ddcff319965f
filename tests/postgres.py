"""A throwaway PostgreSQL server for tests: initdb into a temp dir, pg_ctl on a free port.

PostgreSQL refuses to run as root. When the tests run as root (CI does), the data and socket
directories are handed to the ``postgres`` system user (created if missing) and ``initdb`` /
``pg_ctl`` run through ``runuser -u postgres --`` (or ``setpriv`` where runuser is missing).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PG_USER = "postgres"
DB_NAME = "modelyard_test"


class PostgresUnavailable(Exception):
    """No server could be had; the message says why (tests skip with it)."""


def _version_key(bindir: str) -> tuple[int, ...]:
    match = re.search(r"/postgresql/([\d.]+)/bin", bindir)
    return tuple(int(p) for p in match.group(1).split(".")) if match else (0,)


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres`` (PATH first, then Debian's)."""
    candidates: list[str] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(os.path.dirname(os.path.realpath(on_path)))
    debian = [os.path.dirname(p) for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    candidates += sorted(debian, key=_version_key, reverse=True)
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, b), os.X_OK) for b in ("initdb", "pg_ctl")):
            return Path(bindir)
    raise PostgresUnavailable(
        "PostgreSQL binaries not found (no initdb on PATH or under /usr/lib/postgresql/*/bin); "
        "install Debian's `postgresql` (make test does so when run as root)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_pg_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        pass
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True,
            capture_output=True,
            text=True,
        )
        return pwd.getpwnam(PG_USER)
    except (OSError, subprocess.CalledProcessError, KeyError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise PostgresUnavailable(
            f"running as root and could not create the postgres user: {detail}"
        ) from exc


def _as_pg_user_prefix() -> list[str]:
    if shutil.which("runuser"):
        return ["runuser", "-u", PG_USER, "--"]
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups", "--"]
    raise PostgresUnavailable("running as root but neither runuser nor setpriv is available")


class PostgresServer:
    """One server in its own temp dir. ``start()`` raises PostgresUnavailable with the reason."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.root = False
        self.prefix: list[str] = []
        self.tmp: Path | None = None
        self.port = 0
        self.running = False

    @property
    def datadir(self) -> Path:
        assert self.tmp is not None
        return self.tmp / "data"

    @property
    def sockdir(self) -> Path:
        assert self.tmp is not None
        return self.tmp / "sock"

    @property
    def logfile(self) -> Path:
        assert self.tmp is not None
        return self.tmp / "server.log"

    def url(self, dbname: str = DB_NAME) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [*self.prefix, str(self.bindir / args[0]), *args[1:]]
        # cwd: the postgres user may not be able to enter the caller's directory.
        return subprocess.run(
            cmd,
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start(self) -> None:
        self.root = os.geteuid() == 0
        owner: pwd.struct_passwd | None = None
        if self.root:
            owner = _ensure_pg_user()
            self.prefix = _as_pg_user_prefix()
        # As root, /tmp (world-traversable) rather than a TMPDIR the postgres user may not enter.
        base = "/tmp" if self.root and os.path.isdir("/tmp") else None
        self.tmp = Path(tempfile.mkdtemp(prefix="modelyard-pg-", dir=base))
        self.sockdir.mkdir()
        if owner is not None:
            for path in (self.tmp, self.sockdir):
                os.chown(path, owner.pw_uid, owner.pw_gid)

        init = self._run(
            "initdb", "-D", str(self.datadir), "-A", "trust", "-U", PG_USER,
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        if init.returncode != 0:
            raise PostgresUnavailable(f"initdb failed ({init.returncode}): {init.stderr.strip()}")

        last_error = ""
        for _ in range(3):  # the free port may be taken between picking and binding
            self.port = _free_port()
            opts = (
                f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200"
            )
            proc = self._run(
                "pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile),
                "-w", "-t", "60", "-o", opts, "start",
            )  # fmt: skip
            if proc.returncode == 0:
                self.running = True
                return
            last_error = f"{proc.stdout.strip()} {proc.stderr.strip()}\n{self._log_tail()}"
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")
        raise PostgresUnavailable(f"pg_ctl start failed: {last_error.strip()}")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def create_database(self, name: str) -> None:
        self._execute(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def stop(self) -> None:
        if self.tmp is None:
            return
        if self.running:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")
            self.running = False
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = None
