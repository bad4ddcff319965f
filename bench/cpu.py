"""CPU time per request of each process of a server under a wrk load: the measure bench/NOTES.md
judges changes by (it counts work, not waiting, so it holds on a noisy shared machine).

    python bench/cpu.py URL --pids 123 456 [--clients 64] [--seconds 5] [--body FILE]
    python bench/cpu.py URL --state-dir .modelyard      # every process of a modelyard server

With ``--state-dir`` the processes are the server's supervisor, its children and the replicas
started from that state directory. The body defaults to one W1 row (``{"instances": [[32
floats]]}``). Needs wrk (``make wrk-bin``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

DEFAULT_BODY = json.dumps({"instances": [[0.5] * 32]})


def server_processes(state_dir: Path) -> list[psutil.Process]:
    info = json.loads((state_dir / "server.json").read_text())
    root = psutil.Process(int(info["pid"]))
    found = {p.pid: p for p in [root, *root.children(recursive=True)]}
    marker = str(state_dir.resolve())
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid != os.getpid() and marker in " ".join(proc.info["cmdline"] or []):
            found.setdefault(proc.pid, proc)
    return list(found.values())


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the URL to POST to")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--pids", type=int, nargs="+", help="processes to account")
    who.add_argument("--state-dir", type=Path, help="a running modelyard server's state dir")
    parser.add_argument("--clients", type=int, default=64, help="concurrent connections (64)")
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds (5)")
    parser.add_argument("--body", type=Path, help="request body file (default: one W1 row)")
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        parser.error("wrk is not installed (make wrk-bin)")
    if args.state_dir is not None:
        procs = server_processes(args.state_dir)
    else:
        procs = [psutil.Process(pid) for pid in args.pids]
    body = args.body.read_text() if args.body else DEFAULT_BODY
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [==[{body}]==]\n"
        )
    before = {p.pid: cpu_seconds(p) for p in procs}
    out = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{args.clients}",
            f"-d{args.seconds}s",
            "--latency",
            "-s",
            script.name,
            args.url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    Path(script.name).unlink()
    after = {p.pid: cpu_seconds(p) for p in procs if p.is_running()}
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        print(out, file=sys.stderr)
        return 1
    requests = float(rate.group(1)) * args.seconds
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"50%\s+(\S+)", out)
    p99 = re.search(r"99%\s+(\S+)", out)
    print(
        f"{args.clients} clients: {float(rate.group(1)):,.0f} req/s, "
        f"p50 {p50.group(1) if p50 else '?'}, p99 {p99.group(1) if p99 else '?'}, "
        f"errors {errors.group(1) if errors else 0}"
    )
    total = 0.0
    for proc in procs:
        if proc.pid not in after:
            continue
        used = (after[proc.pid] - before[proc.pid]) / requests * 1e6
        total += used
        print(f"  {used:8.1f} µs/request  {' '.join(proc.cmdline())[:90]}")
    print(f"  {total:8.1f} µs/request  in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
