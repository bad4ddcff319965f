"""Options every command that talks to the control plane shares."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelyard.cli.output import Format

StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="MODELYARD_STATE_DIR",
        help="Server state directory",
        show_default="./.modelyard",
    ),
]
Url = Annotated[str | None, typer.Option("--url", envvar="MODELYARD_URL", help="Control-plane URL")]
Output = Annotated[Format, typer.Option("-o", "--output", help="Output format")]
