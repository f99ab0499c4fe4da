"""The values that pass between HP3 nodes, checked by type when a node receives them.

========================  ==============================================  ==========================
socket type               Python type                                     made by
========================  ==============================================  ==========================
``HP3_MODEL``             :class:`~.hp3_model_nodes.LoadedHP3Model`       Load HP3 Model
                          (or a bare :class:`HP3Model`)
``HP3_HEAD``              :class:`hp3_core.head_encoder.features.HeadFeatures`   HP3 Head Encode
``HP3_HEAD3D``            :class:`hp3_core.head3d.retarget_images.RetargetResult` HP3 3D Head Retarget
``HP3_CONDITIONS``        :class:`hp3_core.head_control.HeadControl`      HP3 Head Controller
``HP3_RECONSTRUCTOR``     :class:`hp3_core.head3d.reconstructor.Reconstructor`   Load HP3 3D Reconstructor
========================  ==============================================  ==========================

ComfyUI only matches socket type names when a graph is wired; an API prompt or another pack can
still hand a node anything. Each function here returns the value if it is of its type, else raises
an HP3Error that names the input and the node to connect, before any work starts.

The pack's core is imported under ComfyUI's module name for the pack (``<pack>.hp3_core``) and, by
scripts and tests, as ``hp3_core``: the same class then exists twice. :func:`of_type` accepts an
instance of either copy (same class name, same module path inside ``hp3_core``), nothing else.
"""
from __future__ import annotations

from typing import Any

from ..hp3_core.errors import HP3Error
from ..hp3_core.head3d.reconstructor import Reconstructor
from ..hp3_core.head3d.retarget_images import RetargetResult
from ..hp3_core.head_control import IN_MEMORY, HeadControl
from ..hp3_core.head_encoder.features import HeadFeatures
from ..hp3_core.hp3_model import HP3Model


def of_type(value: Any, cls: type) -> bool:
    """``isinstance(value, cls)``, also when ``value`` comes from the other import of ``hp3_core``."""
    if isinstance(value, cls):
        return True
    want = (cls.__qualname__, _core_module(cls.__module__))
    return any((c.__qualname__, _core_module(c.__module__)) == want for c in type(value).__mro__)


def _core_module(module: str) -> str:
    """``hp3_core.x.y`` of ``<pack>.hp3_core.x.y`` (other modules unchanged)."""
    parts = module.split(".")
    return ".".join(parts[parts.index("hp3_core"):]) if "hp3_core" in parts else module


def _refuse(name: str, value: Any, source: str) -> HP3Error:
    if value is None:
        return HP3Error(f"{name}: nothing is connected: connect '{source}' to this input")
    return HP3Error(f"{name}: expected the output of '{source}', got a {type(value).__name__}; "
                    f"connect '{source}' to this input")


def expect(value: Any, cls: type, name: str, source: str) -> Any:
    """``value`` if it is a ``cls`` (:func:`of_type`), else the error naming input ``name`` and the node ``source``."""
    if not of_type(value, cls):
        raise _refuse(name, value, source)
    return value


def hp3_model(value: Any, name: str = "hp3_model") -> tuple[HP3Model, str, dict[str, str]]:
    """(HP3Model, weights path, metadata) of an HP3_MODEL value."""
    from .hp3_model_nodes import LoadedHP3Model  # that module imports ComfyUI's folder_paths
    if of_type(value, LoadedHP3Model):
        return value.model, value.path, dict(value.metadata)
    return expect(value, HP3Model, name, "Load HP3 Model"), IN_MEMORY, {}


def head(value: Any, name: str = "head") -> HeadFeatures:
    """An HP3_HEAD value."""
    return expect(value, HeadFeatures, name, "HP3 Head Encode")


def head3d(value: Any, name: str = "head3d") -> RetargetResult:
    """An HP3_HEAD3D value with at least one rendered frame."""
    result = expect(value, RetargetResult, name, "HP3 3D Head Retarget")
    if not result.maps:
        raise HP3Error(f"{name}: the 3D head holds no rendered frames: connect 'HP3 3D Head Retarget' "
                       f"with at least one driving image")
    return result


def head_control(value: Any, name: str = "conditions") -> HeadControl:
    """An HP3_CONDITIONS value."""
    return expect(value, HeadControl, name, "HP3 Head Controller")


def reconstructor(value: Any, name: str = "reconstructor") -> Reconstructor:
    """An HP3_RECONSTRUCTOR value (any object with the :class:`Reconstructor` interface)."""
    if not isinstance(value, Reconstructor):  # a runtime-checkable Protocol: checked structurally
        raise _refuse(name, value, "Load HP3 3D Reconstructor")
    return value
