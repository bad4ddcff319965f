"""Docs stay true: the committed resource reference matches the spec models, and the README's
examples are valid specs."""

import re
from pathlib import Path

from modelyard.spec import load_documents
from modelyard.spec.reference import render

ROOT = Path(__file__).resolve().parents[2]


def test_spec_reference_is_current() -> None:
    committed = (ROOT / "docs" / "SPEC.md").read_text()
    assert committed == render(), (
        "docs/SPEC.md is stale: run `python -m modelyard.spec.reference > docs/SPEC.md`"
    )


def test_readme_yaml_examples_are_valid_specs() -> None:
    """Every YAML example in the README validates against the spec a user's apply goes through."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    assert len(blocks) >= 3
    kinds = {doc.kind for block in blocks for doc in load_documents(block)}
    assert kinds == {"Model", "Endpoint", "TransformJob", "Alarm"}
