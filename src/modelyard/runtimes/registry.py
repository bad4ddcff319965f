"""Runtime plugins by name, imported only when asked for.

Each entry names the module and class of a plugin and, for plugins that need an optional
package, the package and the extra that installs it, so that a missing package is reported as
:class:`~modelyard.errors.MissingDependencyError` rather than an ``ImportError``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from modelyard.errors import MissingDependencyError, RuntimeLoadError, SpecError
from modelyard.runtimes.base import Runtime


@dataclass(frozen=True, slots=True)
class _Plugin:
    target: str  # "module:Class"
    package: str | None = None  # the optional top-level package the module imports
    extra: str | None = None  # the modelyard extra that installs it


_PLUGINS: dict[str, _Plugin] = {
    "sklearn": _Plugin("modelyard.runtimes.sklearn:SklearnRuntime"),
    "onnx": _Plugin("modelyard.runtimes.onnx:OnnxRuntime", package="onnxruntime", extra="onnx"),
    "python": _Plugin("modelyard.runtimes.python:PythonRuntime"),
}


def runtime_names() -> list[str]:
    """The runtimes the model server can load, sorted."""
    return sorted(_PLUGINS)


def check_installed(name: str) -> None:
    """Raise MissingDependencyError when runtime ``name`` needs a package that is not installed
    (checked without importing it, so the control plane can ask before any replica starts)."""
    plugin = _PLUGINS.get(name)
    if not (plugin and plugin.package and plugin.extra):
        return
    if importlib.util.find_spec(plugin.package) is None:
        raise MissingDependencyError(plugin.package, plugin.extra)


def get_runtime_class(name: str) -> type[Runtime]:
    """The :class:`Runtime` subclass serving ``spec.runtime == name``.

    Raises SpecError (field ``spec.runtime``) for a name the model server does not serve, and
    MissingDependencyError when the plugin's optional package is not installed.
    """
    plugin = _PLUGINS.get(name)
    if plugin is None:
        if name == "container":
            raise SpecError(
                "runtime 'container' runs its own command; the model server does not load it",
                "spec.runtime",
            )
        raise SpecError(
            f"unknown runtime {name!r}; known: {', '.join(runtime_names())}", "spec.runtime"
        )
    module_name, _, class_name = plugin.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if plugin.package and plugin.extra and missing == plugin.package:
            raise MissingDependencyError(plugin.package, plugin.extra) from exc
        raise
    cls: type[Runtime] = getattr(module, class_name)
    return cls


def artifact_file(artifact: Path, suffixes: tuple[str, ...], what: str) -> Path:
    """The model file a plugin loads: ``artifact`` itself, or the one file with one of
    ``suffixes`` inside the directory ``artifact``. Raises RuntimeLoadError otherwise."""
    if artifact.is_file():
        return artifact
    if not artifact.is_dir():
        raise RuntimeLoadError(f"artifact not found: {artifact}")
    found = sorted(p for p in artifact.iterdir() if p.is_file() and p.suffix in suffixes)
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise RuntimeLoadError(
            f"artifact directory {artifact} must hold exactly one {what} file "
            f"({'/'.join(suffixes)}); found {names}"
        )
    return found[0]
