"""What every resource spec shares: the base model (unknown fields are errors, specs are frozen)
and the name rule."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="1-63 letters, digits and hyphens")]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
