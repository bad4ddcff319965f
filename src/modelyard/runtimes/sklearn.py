"""scikit-learn runtime: a joblib or pickle file holding a fitted estimator or pipeline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from modelyard.errors import InvalidInputError, RuntimeLoadError
from modelyard.runtimes.base import Runtime
from modelyard.runtimes.registry import artifact_file
from modelyard.spec import ModelSpec

SUFFIXES = (".joblib", ".pkl", ".pickle")


class SklearnRuntime(Runtime):
    """Answers with ``estimator.<spec.method>`` (``predict`` unless the spec says otherwise).

    Inputs are rows of numbers: a 2-D array, or a 1-D array taken as one row. The number of
    features is checked against ``n_features_in_`` before the model is called.
    """

    name = "sklearn"
    can_batch = True

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.method: str = spec.method or "predict"
        self.estimator: Any = None
        self.n_features: int | None = None
        self._call: Callable[[Any], Any] | None = None

    def load(self, artifact: Path) -> None:
        path = artifact_file(artifact, SUFFIXES, "scikit-learn model")
        try:
            estimator = joblib.load(path)
        except Exception as exc:  # unpickling runs arbitrary code; any failure is a bad file
            raise RuntimeLoadError(
                f"cannot load scikit-learn model {path}: {type(exc).__name__}: {exc}"
            ) from exc
        call = getattr(estimator, self.method, None)
        if not callable(call):
            raise RuntimeLoadError(
                f"{type(estimator).__name__} loaded from {path} has no method {self.method!r}"
            )
        n_features = getattr(estimator, "n_features_in_", None)
        self.estimator = estimator
        self.n_features = int(n_features) if n_features is not None else None
        self._call = call

    def predict(self, inputs: Any) -> Any:
        if self._call is None:
            raise RuntimeError("predict called before load")
        rows = as_rows(inputs)
        if self.n_features is not None and rows.shape[1] != self.n_features:
            raise InvalidInputError(
                f"expected {self.n_features} features per row, got {rows.shape[1]}"
            )
        return self._call(rows)


def as_rows(inputs: Any) -> np.ndarray[Any, Any]:
    """``inputs`` as a 2-D numeric array (a 1-D input is one row); InvalidInputError otherwise."""
    rows = inputs if isinstance(inputs, np.ndarray) else None
    if rows is None or rows.dtype.kind not in "biuf":
        try:
            rows = np.asarray(inputs, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"inputs must be rows of numbers: {exc}") from exc
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    if rows.ndim != 2:
        raise InvalidInputError(
            f"inputs must be a row or a list of rows (1 or 2 dimensions), got {rows.ndim}"
        )
    if rows.shape[0] == 0:
        raise InvalidInputError("inputs hold no rows")
    return rows
