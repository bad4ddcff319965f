"""Framework adapters ("runtimes"): the contract in :mod:`.base`, the plugins by name in
:mod:`.registry`. Importing this package imports no ML framework."""

from modelyard.runtimes.base import Runtime
from modelyard.runtimes.registry import get_runtime_class, runtime_names

__all__ = ["Runtime", "get_runtime_class", "runtime_names"]
