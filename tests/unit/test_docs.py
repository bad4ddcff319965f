"""Docs stay true: the committed resource reference matches the spec models."""

from pathlib import Path

from modelyard.spec.reference import render

ROOT = Path(__file__).resolve().parents[2]


def test_spec_reference_is_current() -> None:
    committed = (ROOT / "docs" / "SPEC.md").read_text()
    assert committed == render(), (
        "docs/SPEC.md is stale: run `python -m modelyard.spec.reference > docs/SPEC.md`"
    )
