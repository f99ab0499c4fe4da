"""Nodes that apply HP3 to a MODEL: the head controller, the adaptive connector, and both in one."""
from __future__ import annotations

from ..hp3_core.head_control import HeadControl
from .hp3_patch import apply_hp3, head_control_from_inputs

_STRENGTH = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.01,
                       "tooltip": "How strongly the head conditions change the UNet (0 = this node changes "
                                  "nothing; an HP3 applied earlier stays)."})
_START = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                    "tooltip": "Where HP3 starts, as a percent of the noise schedule (0 = the noisiest "
                               "start), as in Apply ControlNet's start_percent."})
_END = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                  "tooltip": "Where HP3 stops, as a percent of the noise schedule (1 = the very end), as "
                             "in Apply ControlNet's end_percent."})
_HP3_MODEL = ("HP3_MODEL", {"tooltip": "From Load HP3 Model (its base family must match the MODEL's)."})
_HEAD = ("HP3_HEAD", {"tooltip": "The source person's head, from HP3 Head Encode."})
_HEAD3D = ("HP3_HEAD3D", {"tooltip": "The retargeted 3D head renders, from HP3 3D Head Retarget "
                                     "(one per driving frame; frames map to the batch)."})
_MODEL = ("MODEL", {"tooltip": "The base model (SD1.5 or SDXL, the family the HP3 weights are for)."})


class HP3HeadController:
    DESCRIPTION = ("Prepares HP3's 3D-aware head conditions: the person's head tokens (computed once from "
                   "the encoded head) with the shaded 3D renders of the retargeted head. During sampling "
                   "the head controller turns them into one feature map per decoder block, for the "
                   "conditional (positive) branch only. Warns when the renders come from another 3D "
                   "backend than the one the weights were trained with.")
    CATEGORY = "HP3/apply"
    RETURN_TYPES = ("HP3_CONDITIONS",)
    RETURN_NAMES = ("conditions",)
    OUTPUT_TOOLTIPS = ("Head conditions for HP3 Adaptive Connector.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"hp3_model": _HP3_MODEL, "head": _HEAD, "head3d": _HEAD3D,
                             "strength": _STRENGTH, "start_percent": _START, "end_percent": _END}}

    def build(self, hp3_model, head, head3d, strength: float = 1.0, start_percent: float = 0.0,
              end_percent: float = 1.0) -> tuple[HeadControl]:
        return (head_control_from_inputs(hp3_model, head, head3d, strength, start_percent, end_percent),)


class HP3ApplyConnector:
    DESCRIPTION = ("Installs HP3's adaptive connector on a copy of the MODEL: at every decoder block the "
                   "head conditions are added to the decoder features and modulate the block's first "
                   "GroupNorm. The unconditional (negative) branch runs the base UNet unchanged. Other "
                   "copies of the MODEL are not affected; an untrained (zero) connector changes nothing. "
                   "One HP3 per MODEL: an HP3 applied earlier is replaced (logged), except at strength 0. "
                   "Apply it after other packs' model patches: it chains their UNet wrapper.")
    CATEGORY = "HP3/apply"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The MODEL with HP3 applied (connect it to a KSampler).",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": _MODEL, "conditions": ("HP3_CONDITIONS", {
            "tooltip": "From HP3 Head Controller."})}}

    def apply(self, model, conditions: HeadControl):
        return (apply_hp3(model, conditions),)


class HP3Apply:
    DESCRIPTION = ("Applies HP3 in one node: HP3 Head Controller followed by HP3 Adaptive Connector, with "
                   "exactly the same result. The head and the 3D renders condition the positive branch; "
                   "the negative branch runs the base UNet. One HP3 per MODEL: an HP3 applied earlier is "
                   "replaced (logged), except at strength 0.")
    CATEGORY = "HP3/apply"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The MODEL with HP3 applied (connect it to a KSampler).",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": _MODEL, "hp3_model": _HP3_MODEL, "head": _HEAD, "head3d": _HEAD3D,
                             "strength": _STRENGTH, "start_percent": _START, "end_percent": _END}}

    def apply(self, model, hp3_model, head, head3d, strength: float = 1.0, start_percent: float = 0.0,
              end_percent: float = 1.0):
        (conditions,) = HP3HeadController().build(hp3_model, head, head3d, strength, start_percent, end_percent)
        return HP3ApplyConnector().apply(model, conditions)
