"""ONNX runtime: a single-input ``.onnx`` model run by onnxruntime on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from modelyard.errors import InvalidInputError, RuntimeLoadError
from modelyard.runtimes.base import Runtime
from modelyard.runtimes.registry import artifact_file
from modelyard.spec import ModelSpec

_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class OnnxRuntime(Runtime):
    """Runs one inference session per replica, one intra-op thread (replicas scale out).

    The input is cast to the model input's element type; a rank one short of the model's (a
    single row) gets a leading batch axis. One output is returned as is; several as a mapping
    of output name to array.
    """

    name = "onnx"
    can_batch = True

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.session: Any = None
        self.input_name = ""
        self.input_shape: list[int | str | None] = []
        self.input_dtype: Any = None
        self.output_names: list[str] = []

    def load(self, artifact: Path) -> None:
        path = artifact_file(artifact, (".onnx",), "ONNX model")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise RuntimeLoadError(
                f"cannot load ONNX model {path}: {type(exc).__name__}: {exc}"
            ) from exc
        inputs = session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise RuntimeLoadError(
                f"ONNX model {path} has {len(inputs)} inputs ({names}); "
                "the onnx runtime serves single-input models"
            )
        self.session = session
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self.input_dtype = _DTYPES.get(inputs[0].type)
        self.output_names = [o.name for o in session.get_outputs()]

    def predict(self, inputs: Any) -> Any:
        if self.session is None:
            raise RuntimeError("predict called before load")
        array = self._as_input(inputs)
        try:
            outputs = self.session.run(None, {self.input_name: array})
        except InvalidArgument as exc:
            raise InvalidInputError(f"the ONNX model rejected the input: {exc}") from exc
        if len(outputs) == 1:
            return outputs[0]
        return dict(zip(self.output_names, outputs, strict=True))

    def batch_rows(self, inputs: Any) -> Any | None:
        """The input with its batch axis (cast and checked as for a call of its own); None when
        the model has no free leading batch axis to join requests along."""
        if not self.input_shape or isinstance(self.input_shape[0], int):
            return None
        return self._as_input(inputs)

    def _as_input(self, inputs: Any) -> np.ndarray[Any, Any]:
        try:
            array = np.asarray(inputs, dtype=self.input_dtype)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"inputs must be numbers: {exc}") from exc
        rank = len(self.input_shape)
        if array.ndim == rank - 1:
            array = array.reshape((1, *array.shape))
        fixed = [d if isinstance(d, int) else None for d in self.input_shape]
        if array.ndim != rank or any(
            want is not None and want != got for want, got in zip(fixed, array.shape, strict=True)
        ):
            if rank == 2 and array.ndim == 2 and fixed[1] is not None:
                raise InvalidInputError(
                    f"expected {fixed[1]} features per row, got {array.shape[1]}"
                )
            want_shape = ", ".join("N" if d is None else str(d) for d in fixed)
            raise InvalidInputError(
                f"expected input {self.input_name!r} of shape [{want_shape}], "
                f"got {list(array.shape)}"
            )
        return array
