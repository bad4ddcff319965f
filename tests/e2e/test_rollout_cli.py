"""Rollouts from the outside: `modelyard rollout status|abort|resume`, `history`,
`update-weights` and `apply --wait` through a canary, as a user runs them against a server.

The canary bakes 30 s, longer than the tests take: everything below happens while its first
step (50 % of traffic on the new revision) runs, or after it was aborted."""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support import ServerProcess, make_sklearn_model, wait_for, write_yaml

USER = getpass.getuser()
CANARY = {
    "blue_green": {
        "traffic": {
            "type": "canary",
            "wait_s": 30,
            "canary_size": {"type": "capacity_percent", "value": 50},
        }
    }
}


def command(state: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "modelyard.cli.main", *args, "--state-dir", str(state)]


def cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(state, *args), capture_output=True, text=True, timeout=60)


def background(state: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command(state, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def model(name: str, method: str = "predict") -> dict[str, Any]:
    spec = {"artifact": "model.joblib", "runtime": "sklearn", "method": method}
    return {"kind": "Model", "name": name, "spec": spec}


def endpoint(name: str, variants: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"kind": "Endpoint", "name": name, "spec": {"variants": variants, **spec}}


def variant(name: str, model_name: str, weight: float = 1.0) -> dict[str, Any]:
    return {"name": name, "model": model_name, "instance_count": 1, "weight": weight}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server with endpoint `ep` (one variant) and `duo` (two), created by `apply`."""
    root = tmp_path_factory.mktemp("e2e-rollout")
    make_sklearn_model(root / "model.joblib")
    spec = write_yaml(
        root / "create.yaml",
        [
            model("m"),
            model("w"),
            endpoint("ep", [variant("primary", "m")]),
            endpoint("duo", [variant("a", "w"), variant("b", "w")]),
        ],
    )
    server = ServerProcess(root / "state")
    try:
        created = cli(server.state_dir, "apply", "-f", str(spec))
        assert created.returncode == 0, created.stdout + created.stderr
        yield {"server": server, "state": server.state_dir, "root": root}
    finally:
        server.stop()


def _shifting(dep: dict[str, Any] | None) -> dict[str, Any] | None:
    return dep if dep is not None and dep["phase"] == "shifting" else None


def _read_until(stream: IO[str] | None, text: str) -> str:
    """Lines of a background command's output up to the first holding ``text``."""
    assert stream is not None
    lines = []
    while line := stream.readline():
        lines.append(line)
        if text in line:
            break
    return "".join(lines)


@pytest.fixture(scope="module")
def canary(server: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`ep` updated with a canary policy (`apply --wait` in the background), its new fleet
    ready and 50 % of traffic shifted; `rollout status --watch` follows it in the background."""
    state, root = server["state"], server["root"]
    update = write_yaml(
        root / "update.yaml",
        [model("m", "predict_proba"), endpoint("ep", [variant("primary", "m")], deployment=CANARY)],
    )
    applying = background(state, "apply", "-f", str(update), "--wait")
    client = server["server"].client
    dep = wait_for(
        lambda: _shifting(client.rollout_status("ep")["rollout"]),
        timeout_s=30,
        what="the canary's new fleet to be ready and take its share of traffic",
    )
    watching = background(state, "rollout", "status", "ep", "--watch")
    # What both have shown of the canary step before the tests go on (and abort it).
    seen = {"applied": _read_until(applying.stderr, "(shifting)")}
    seen["watched"] = _read_until(watching.stdout, "(shifting)")
    try:
        # Deployment ids count over all endpoints: ep's creation and duo's came first.
        yield {**server, "applying": applying, "watching": watching, "id": dep["id"], **seen}
    finally:
        for proc in (applying, watching):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_status_shows_the_canary_step_and_the_split(canary: dict[str, Any]) -> None:
    shown = cli(canary["state"], "rollout", "status", "ep")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert f"Rollout {canary['id']} of endpoint/ep: revision 1 → 2, blue/green, canary" in text
    assert "Status:     InProgress (shifting)" in text
    assert f" by {USER} (running " in text
    assert "Changes:    model m: method changed; deployment changed" in text
    assert "1. 50 % of traffic current  ·  2. 100 % of traffic pending" in text
    assert "Traffic:    revision 1 (old) 50 %: primary 50 % (1 ready)" in text
    assert "revision 2 (new) 50 %: primary 50 % (1 ready)" in text
    assert "left of 30s" in text and "Time limit:" in text
    assert "Alarms:     none watched" in text
    assert "new fleet ready; step 1 of 2: 50 % of traffic to revision 2" in text

    view = json.loads(cli(canary["state"], "rollout", "status", "ep", "-o", "json").stdout)
    assert [(t["revision"], t["share"]) for t in view["traffic"]] == [(1, 0.5), (2, 0.5)]
    assert view["rollout"]["status"] == "InProgress" and 0 < view["rollout"]["wait_left_s"] <= 30


def test_an_apply_during_the_rollout_is_refused_naming_it(canary: dict[str, Any]) -> None:
    other = write_yaml(
        canary["root"] / "other.yaml",
        [model("m"), endpoint("ep", [variant("primary", "m")], deployment=CANARY)],
    )
    refused = cli(canary["state"], "apply", "-f", str(other))
    assert refused.returncode == 1
    rid = canary["id"]
    assert f"error: cannot update endpoint 'ep': rollout {rid} (revision 1 → 2) is in progress" in (
        refused.stderr
    )
    assert "`modelyard rollout abort ep`" in refused.stderr


@pytest.fixture(scope="module")
def aborted(canary: dict[str, Any]) -> dict[str, Any]:
    """`rollout abort ep --wait`; the background `apply --wait` and `--watch` finish with it."""
    ran = cli(canary["state"], "rollout", "abort", "ep", "--wait")
    out, err = canary["applying"].communicate(timeout=30)
    applied = (out, canary["applied"] + err)
    out, err = canary["watching"].communicate(timeout=30)
    watched = (canary["watched"] + out, err)
    return {**canary, "ran": ran, "applied": applied, "watched": watched}


def test_abort_wait_rolls_back_to_the_old_revision(aborted: dict[str, Any]) -> None:
    ran, rid = aborted["ran"], aborted["id"]
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert f"rollout {rid} of endpoint/ep: abort asked; traffic returns to revision 1" in ran.stdout
    assert f"error: rollout {rid} of endpoint/ep Aborted: aborted by {USER}" in ran.stderr

    view = json.loads(cli(aborted["state"], "rollout", "status", "ep", "-o", "json").stdout)
    assert view["rollout"]["status"] == "Aborted" and view["active_revision"] == 1
    assert [(t["revision"], t["share"]) for t in view["traffic"]] == [(1, 1.0)]
    text = cli(aborted["state"], "rollout", "status", "ep").stdout
    assert "Status:     Aborted" in text and f"Reason:     aborted by {USER}" in text
    assert "Traffic:    revision 1 100 %: primary 100 % (1 ready)" in text


def test_apply_wait_and_watch_follow_the_rollout_to_its_end(aborted: dict[str, Any]) -> None:
    rid = aborted["id"]
    assert aborted["applying"].returncode == 1
    out, err = aborted["applied"]
    assert "endpoint/ep updated (revision 2)" in out
    assert f"rollout {rid} (revision 1 → 2): InProgress (shifting); step 1 of 2" in err
    assert f"endpoint/ep: rollout {rid} Aborted: aborted by {USER}" in err
    assert "error: not in service: ep" in err

    assert aborted["watching"].returncode == 1
    out, _ = aborted["watched"]
    lines = out.splitlines()
    assert lines[0].startswith(f"rollout {rid} (revision 1 → 2): InProgress (shifting)")
    assert f"rollout {rid} (revision 1 → 2): Aborted; traffic revision 1 100 %" in lines
    assert "Status:     Aborted" in out  # the final state, printed once it ended
    assert "\x1b[" not in out  # lines, not a redrawn screen, into a pipe


def test_history_lists_every_deployment(aborted: dict[str, Any]) -> None:
    listed = cli(aborted["state"], "history", "ep", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    update, create = json.loads(listed.stdout)[:2]  # newest first
    assert update["id"] == aborted["id"] and update["id"] > create["id"]
    assert create["mode"] == "create" and create["status"] == "Succeeded"
    assert update["mode"] == "blue_green" and update["status"] == "Aborted"
    assert (update["from_revision"], update["to_revision"]) == (1, 2)
    assert create["by"] == update["by"] == USER
    assert update["reason"] == f"aborted by {USER}"
    assert update["changes"] == ["model m: method changed", "deployment changed"]

    lines = cli(aborted["state"], "history", "ep").stdout.splitlines()
    assert lines[0].split() == ["ID", "REVISION", "MODE", "STATUS", "BY", "STARTED", "TOOK"]
    row = lines.index(next(ln for ln in lines if ln.startswith(f"{update['id']} ")))
    assert lines[row].split()[1:6] == ["1", "→", "2", "blue_green", "Aborted"]
    assert lines[row + 1 : row + 3] == [
        "    changes: model m: method changed; deployment changed",
        f"    reason:  aborted by {USER}",
    ]
    assert "    changes: created with variants primary" in lines


def test_resume_starts_a_new_rollout(aborted: dict[str, Any]) -> None:
    resumed = cli(aborted["state"], "rollout", "resume", "ep")
    assert resumed.returncode == 0, resumed.stderr
    view = json.loads(cli(aborted["state"], "rollout", "status", "ep", "-o", "json").stdout)
    dep = view["rollout"]
    assert f"rollout {dep['id']} of endpoint/ep started: revision 1 → 3 (blue/green, canary)" in (
        resumed.stdout
    )
    assert dep["id"] > aborted["id"] and (dep["from_revision"], dep["to_revision"]) == (1, 3)
    assert dep["status"] == "InProgress" and dep["changes"][0] == f"resumes rollout {aborted['id']}"
    stopped = cli(aborted["state"], "rollout", "abort", "ep")
    assert stopped.returncode == 0, stopped.stderr


def test_update_weights_changes_no_replica(server: dict[str, Any]) -> None:
    state = server["state"]
    before = json.loads(cli(state, "describe", "endpoint", "duo", "-o", "json").stdout)
    replicas = {v["name"]: [r["id"] for r in v["replicas"]] for v in before["variants"]}

    updated = cli(state, "update-weights", "duo", "--set", "a:weight=3", "--set", "b:weight=1")
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert "endpoint/duo updated (revision 2)" in updated.stdout

    after = json.loads(cli(state, "describe", "endpoint", "duo", "-o", "json").stdout)
    assert after["active_revision"] == 2 and after["status"] == "InService"
    assert {v["name"]: v["weight"] for v in after["variants"]} == {"a": 3.0, "b": 1.0}
    assert {v["name"]: [r["id"] for r in v["replicas"]] for v in after["variants"]} == replicas
    split = json.loads(cli(state, "rollout", "status", "duo", "-o", "json").stdout)["traffic"]
    assert [(v["name"], v["share"]) for v in split[0]["variants"]] == [("a", 0.75), ("b", 0.25)]

    newest = json.loads(cli(state, "history", "duo", "-o", "json").stdout)[0]
    assert newest["mode"] == "immediate" and newest["status"] == "Succeeded"
    assert newest["changes"][:2] == ["weights and capacities", "variant a: weight 1.0 → 3.0"]

    same = cli(state, "update-weights", "duo", "--set", "a:weight=3")
    assert same.returncode == 0 and "endpoint/duo unchanged (revision 2)" in same.stdout


def test_update_weights_explains_a_bad_set(server: dict[str, Any]) -> None:
    bad = cli(server["state"], "update-weights", "duo", "--set", "a:colour=3")
    assert bad.returncode == 2
    said = " ".join(bad.stderr.replace("│", " ").split())  # typer draws it in a box
    assert "for --set: 'colour=3': only weight=W and instance_count=N can change" in said
    unknown = cli(server["state"], "update-weights", "duo", "--set", "c:weight=2")
    assert unknown.returncode == 1
    assert "no variant named 'c' (variants: a, b)" in unknown.stderr
