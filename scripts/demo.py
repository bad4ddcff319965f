"""`make demo`: a five-minute tour, run for you. Starts a server, trains and deploys a small
scikit-learn model from YAML, invokes it with the CLI and with curl, shows a serverless endpoint
scaling to zero and back, an async endpoint's queued request and a batch transform job over a
folder of CSV files, shows status and counts, then stops everything it started."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "demo-work"
BIN = Path(sys.executable).parent
MODELYARD = str(BIN / "modelyard")

SPEC = """\
kind: Model
name: churn-v1
spec:
  artifact: models/churn.joblib      # any fsspec URI; relative to this file
  runtime: sklearn
  method: predict_proba
---
kind: Endpoint
name: churn
spec:
  type: realtime
  variants:
    - name: primary
      model: churn-v1
      instance_count: 2
"""


MORE = """\
kind: Endpoint
name: churn-serverless
spec:
  type: serverless
  serverless: {memory_mb: 1024, max_concurrency: 10, idle_timeout_s: 1}
  variants: [{name: primary, model: churn-v1}]
---
kind: Endpoint
name: churn-async
spec:
  type: async
  async: {idle_timeout_s: 60}
  variants: [{name: primary, model: churn-v1}]
"""


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def run(*args: str, show: str | None = None, live: bool = False) -> str:
    """Run a command in demo-work/ and show its output (``live``: as it comes, e.g. progress)."""
    print(f"$ {show or ' '.join(args)}", flush=True)
    if live:
        done = subprocess.run(args, cwd=WORK, timeout=300, check=False)
        if done.returncode != 0:
            raise SystemExit(f"demo failed: {' '.join(args)} exited with {done.returncode}")
        return ""
    out = subprocess.run(args, cwd=WORK, capture_output=True, text=True, timeout=300)
    sys.stdout.write(out.stdout)
    sys.stdout.write(out.stderr)
    if out.returncode != 0:
        raise SystemExit(f"demo failed: {' '.join(args)} exited with {out.returncode}")
    return out.stdout


def wait_for_server(
    state: Path, proc: subprocess.Popen[bytes], timeout_s: float = 60
) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("demo failed: the server exited early (see demo-work/server.log)")
        info = state / "server.json"
        if info.exists():
            return json.loads(info.read_text())
        time.sleep(0.1)
    raise SystemExit("demo failed: the server did not start within 60 s")


def wait_for_counts(expected: int, timeout_s: float = 10) -> None:
    """The gateway reports counts to the control plane every 0.25 s; wait until they are in."""
    from modelyard import Client

    with Client() as client:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if client.describe_endpoint("churn")["invocations"] >= expected:
                return
            time.sleep(0.1)


def serverless_at_zero(gateway_url: str, row: str) -> None:
    """Wait until the serverless endpoint has scaled to zero, then time one request: it is held
    while a replica starts, not failed."""
    import httpx

    from modelyard import Client

    print("waiting for churn-serverless to scale to zero (idle_timeout_s: 1) ...")
    with Client() as client:
        deadline = time.monotonic() + 60
        while client.describe_endpoint("churn-serverless")["variants"][0]["replicas"]:
            if time.monotonic() > deadline:
                raise SystemExit("demo failed: the serverless endpoint did not scale to zero")
            time.sleep(0.2)
        print("no replica is running; invoking it ...")
        started = time.perf_counter()
        resp = httpx.post(
            f"{gateway_url}/endpoints/churn-serverless/invocations",
            content=row,
            headers={"Content-Type": "application/json"},
            timeout=70,
            trust_env=False,
        )
        took = (time.perf_counter() - started) * 1000
        print(
            f"HTTP {resp.status_code} in {took:.0f} ms (a replica started meanwhile): {resp.text}"
        )
        time.sleep(0.5)  # the gateway reports its counts every 0.25 s
        status = client.describe_endpoint("churn-serverless")["serverless_status"]
        print(f"cold starts counted: {status['cold_starts']}")


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "models").mkdir(parents=True)
    state = WORK / ".modelyard"

    step("Train a small scikit-learn model")
    import joblib
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    x, y = make_classification(n_samples=2000, n_features=32, random_state=0)
    joblib.dump(LogisticRegression(max_iter=1000).fit(x, y), WORK / "models" / "churn.joblib")
    print("saved demo-work/models/churn.joblib (LogisticRegression, 32 features)")
    (WORK / "churn.yaml").write_text(SPEC)

    step("Start the server (control plane + gateway), state in demo-work/.modelyard")
    log = open(WORK / "server.log", "wb")  # noqa: SIM115 - closed when the server stops
    server = subprocess.Popen(
        [MODELYARD, "server", "--state-dir", str(state), "--port", "0", "--gateway-port", "0"],
        cwd=WORK,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        info = wait_for_server(state, server)
        print((WORK / "server.log").read_text().strip())
        os.environ["MODELYARD_STATE_DIR"] = str(state)

        step("Deploy it from YAML")
        print(SPEC)
        run(MODELYARD, "apply", "-f", "churn.yaml")

        row = json.dumps({"instances": [x[0].round(4).tolist()]})
        step("Invoke with the CLI")
        run(
            MODELYARD,
            "invoke",
            "churn",
            "--body",
            row,
            show="modelyard invoke churn --body '{\"instances\": [[...32 floats...]]}'",
        )

        step("Invoke with curl (SageMaker Runtime's wire format)")
        url = f"{info['gateway_url']}/endpoints/churn/invocations"
        csv = ",".join(str(v) for v in x[1].round(4))
        if shutil.which("curl") is None:
            print("(curl is not installed here; skipping this step)")
        else:
            run(
                "curl",
                "-sS",
                "-i",
                "-X",
                "POST",
                url,
                "-H",
                "Content-Type: text/csv",
                "--data",
                csv,
                show=f"curl -i -X POST {url} -H 'Content-Type: text/csv' --data '<32 floats>'",
            )
            print()

        step("Serverless and async endpoints")
        (WORK / "more.yaml").write_text(MORE)
        print(MORE)
        run(MODELYARD, "apply", "-f", "more.yaml")
        serverless_at_zero(info["gateway_url"], row)
        rows = WORK / "rows.csv"
        rows.write_text("\n".join(",".join(str(v) for v in r) for r in x[:5].round(4)) + "\n")
        run(
            MODELYARD,
            "invoke",
            "churn-async",
            "--async",
            "--file",
            "rows.csv",
            "--content-type",
            "text/csv",
            "--wait",
            show="modelyard invoke churn-async --async --file rows.csv --content-type text/csv "
            "--wait",
        )
        run(MODELYARD, "async", "list", "churn-async")
        results = sorted((state / "async" / "churn-async" / "output").glob("*.out"))
        print(f"$ cat {results[-1].relative_to(WORK)}")
        print(results[-1].read_text())

        step("A batch transform job")
        transform_job(x)

        step("Status and per-endpoint counts")
        for _ in range(3):
            run(MODELYARD, "invoke", "churn", "--body", row, show="modelyard invoke churn ...")
        wait_for_counts(5)
        run(MODELYARD, "get", "endpoints")
        run(MODELYARD, "describe", "endpoint", "churn")
    finally:
        step("Stop everything the demo started")
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
        print(f"server stopped (exit status {server.returncode}); replicas drained")
    print("\nDemo done. Files are in demo-work/; `make clean` removes them.")


JOB = """\
kind: TransformJob
name: score-demo
spec:
  model: churn-v1
  input: {uri: batch-in/, content_type: text/csv}   # every file under it
  output: {uri: batch-out/}                         # batch-in/a.csv -> batch-out/a.csv.out
  instance_count: 2
  max_payload_mb: 1
"""


def transform_job(x: object) -> None:
    """A batch transform over two CSV files: progress while it runs, then one output per file."""
    import numpy as np

    rows = np.asarray(x)
    folder = WORK / "batch-in"
    folder.mkdir(exist_ok=True)
    for name, count in (("a.csv", 20000), ("b.csv", 5000)):
        block = rows[np.arange(count) % len(rows)]
        np.savetxt(folder / name, block, delimiter=",", fmt="%.6g")
    (WORK / "job.yaml").write_text(JOB)
    print(JOB)
    run(MODELYARD, "transform", "run", "-f", "job.yaml", "--wait", live=True)
    run(MODELYARD, "transform", "list")
    out = WORK / "batch-out" / "a.csv.out"
    lines = out.read_text().splitlines()
    print(f"$ head -3 {out.relative_to(WORK)}   # {len(lines)} lines, one per input row")
    print("\n".join(lines[:3]))


if __name__ == "__main__":
    main()
