"""Python runtime: a user's predictor class, ``spec.predictor = "module:Class"``.

The class is imported from the artifact directory (put first on ``sys.path``) and must have::

    class Predictor:
        can_batch = False                      # optional: True when predict takes many rows
        def load(self, model_dir: str) -> None: ...
        def predict(self, inputs): ...          # returns anything the codecs can encode

``inputs`` is the decoded request as is: the JSON value for JSON (the ``instances`` or
``inputs`` member when the body has one), a numpy array for CSV and NPY.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from modelyard.errors import RuntimeLoadError
from modelyard.runtimes.base import Runtime
from modelyard.spec import ModelSpec


class PythonRuntime(Runtime):
    name = "python"
    #: The model server hands this runtime JSON values as decoded, not numpy arrays.
    array_inputs = False
    #: A user's predictor may wait on I/O (a feature store, another service).
    cpu_bound = False

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.predictor: Any = None

    def load(self, artifact: Path) -> None:
        model_dir = artifact if artifact.is_dir() else artifact.parent
        if not model_dir.is_dir():
            raise RuntimeLoadError(f"artifact not found: {artifact}")
        module_name, _, class_name = (self.spec.predictor or "").partition(":")
        if not module_name or not class_name:
            raise RuntimeLoadError(f"predictor must be 'module:Class', got {self.spec.predictor!r}")
        if str(model_dir) not in sys.path:
            sys.path.insert(0, str(model_dir))
        importlib.invalidate_caches()
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # the user's module may fail in any way while importing
            raise RuntimeLoadError(
                f"cannot import predictor module {module_name!r} from {model_dir}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        cls = getattr(module, class_name, None)
        if not isinstance(cls, type):
            raise RuntimeLoadError(f"module {module_name!r} has no class {class_name!r}")
        missing = [m for m in ("load", "predict") if not callable(getattr(cls, m, None))]
        if missing:
            raise RuntimeLoadError(
                f"predictor {self.spec.predictor} lacks method(s): {', '.join(missing)}"
            )
        try:
            predictor = cls()
            predictor.load(str(model_dir))
        except Exception as exc:  # the user's code; report it as the load failure it is
            raise RuntimeLoadError(
                f"predictor {self.spec.predictor} failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        self.predictor = predictor
        self.can_batch = bool(getattr(cls, "can_batch", False))

    def predict(self, inputs: Any) -> Any:
        if self.predictor is None:
            raise RuntimeError("predict called before load")
        return self.predictor.predict(inputs)
