"""Modelyard: self-hosted managed endpoints for ML models.

The public SDK surface. Importing it starts no server and imports no ML framework.
"""

from typing import TYPE_CHECKING

from modelyard.errors import (
    ConflictError,
    ModelyardError,
    NotFoundError,
    PlatformError,
    SpecError,
    UserError,
)

if TYPE_CHECKING:  # type checkers see the real class; at run time it loads on first use
    from modelyard.client import Client

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The client pulls in httpx; load it on first use so `import modelyard` stays light.
    if name == "Client":
        from modelyard.client import Client

        return Client
    raise AttributeError(name)


__all__ = [
    "Client",
    "ConflictError",
    "ModelyardError",
    "NotFoundError",
    "PlatformError",
    "SpecError",
    "UserError",
    "__version__",
]
