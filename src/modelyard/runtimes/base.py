"""The runtime contract: a framework adapter that loads a model once and answers predictions.

A runtime is a small plugin. The model server builds one per replica with the model's spec, calls
:meth:`Runtime.load` once with a local directory or file holding the artifact, then calls
:meth:`Runtime.predict` per request (from a worker thread, never on the event loop).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.spec import ModelSpec


class Runtime(ABC):
    """Subclass to add a framework. ``name`` is the value of ``spec.runtime`` it serves."""

    name: str = ""
    #: True when ``predict`` on N rows costs about what it costs on one (adaptive batching uses it).
    can_batch: bool = False
    #: True: JSON inputs arrive as a numeric numpy array; False: as the decoded JSON value.
    array_inputs: bool = True
    #: True when ``predict`` only computes (no I/O): the replica may then answer several
    #: requests one after the other in one worker thread instead of one thread each.
    cpu_bound: bool = True

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @abstractmethod
    def load(self, artifact: Path) -> None:
        """Load the model from a local file or directory; raise RuntimeLoadError when it cannot."""

    @abstractmethod
    def predict(self, inputs: Any) -> Any:
        """Answer for decoded inputs (a numpy array or a JSON value); return array-like or JSON.

        Raise InvalidInputError for inputs the model cannot take; any other exception is reported
        to the caller as the model's error (HTTP 424).
        """

    def batch_rows(self, inputs: Any) -> Any | None:
        """``inputs`` as rows along the first axis, ready to join other requests' rows in one
        :meth:`predict` call, or None when they cannot share a call.

        Adaptive batching calls this on every request when the variant batches and the runtime
        ``can_batch``. The default takes a 2-D or higher array as rows, a 1-D array as one row,
        and a non-empty JSON list as a list of instances.
        """
        if isinstance(inputs, np.ndarray):
            if inputs.ndim == 1:
                return inputs.reshape(1, -1) if inputs.size else None
            return inputs if inputs.ndim >= 2 and len(inputs) else None
        if isinstance(inputs, list) and inputs:
            return inputs
        return None
