"""Nodes of the 3D module: load a reconstructor; retarget a source head onto driving frames."""
from __future__ import annotations

import torch

from ..hp3_core.head3d.reconstructor import BACKENDS, FLAME_FILES, SMIRK_FILES, build_reconstructor, find_file
from ..hp3_core.head3d.retarget import RetargetMode
from ..hp3_core.head3d.retarget_images import retarget_images
from ..hp3_core.image_io import comfy_to_numpy
from . import model_folders
from .previews import preview_ui
from .progress import frame_callback


class HP3ReconstructorLoader:
    DESCRIPTION = ("Chooses the 3D head reconstructor. 'ict' is the offline default built into the pack: "
                   "the ICT-FaceKit full head (skull, ears, neck; MIT licence) fitted to MediaPipe's "
                   "landmarks. 'smirk' uses SMIRK_em1.pt (models/smirk) and FLAME 2020 generic_model.pkl "
                   "(models/flame). 'mediapipe' is MediaPipe's face mesh: face only, an approximation. "
                   "'auto' takes smirk when both files are found, else ict.")
    CATEGORY = "HP3/3D"
    RETURN_TYPES = ("HP3_RECONSTRUCTOR",)
    RETURN_NAMES = ("reconstructor",)
    OUTPUT_TOOLTIPS = ("The 3D reconstructor, for HP3 3D Head Retarget.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "backend": (list(b for b in BACKENDS if b != "synthetic"), {
                "default": "auto", "tooltip": "auto: smirk when its files are found, else ict (built-in full head)."}),
            "device": (["cpu", "gpu"], {
                "default": "cpu", "tooltip": "Where the SMIRK encoder runs (small; CPU keeps VRAM free)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, backend: str, device: str):
        # 'auto' changes its choice when a user adds or replaces SMIRK/FLAME files.
        found = [find_file(names, model_folders.folders(kind)) for names, kind in
                 ((SMIRK_FILES, "smirk"), (FLAME_FILES, "flame"))]
        return ":".join([backend, device] + [f"{p}@{p.stat().st_mtime_ns}" if p else "-" for p in found])

    def load(self, backend: str, device: str):
        import comfy.model_management
        dev = "cpu" if device == "cpu" else str(comfy.model_management.get_torch_device())
        return (build_reconstructor(backend, model_folders.folders("smirk"), model_folders.folders("flame"), dev),)


class HP3HeadRetarget:
    DESCRIPTION = ("Rebuilds the source's head in 3D with the driving image's expression, eyelids, jaw and "
                   "head pose, and renders it into each driving frame at full resolution: a grey shaded "
                   "render (HP3's condition), a normal map (ControlNet normalbae convention), a depth map "
                   "(near = bright) and a mask. The built-in ict backend rebuilds the full head; with the "
                   "mediapipe backend only the face is rebuilt (an approximation); the info output says which backend and detector were used.")
    CATEGORY = "HP3/3D"
    RETURN_TYPES = ("HP3_HEAD3D", "IMAGE", "IMAGE", "IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("head3d", "shaded", "normal", "depth", "mask", "info")
    OUTPUT_TOOLTIPS = (
        "The retargeted 3D heads, for the HP3 head controller.",
        "Grey shaded render on black, one per driving frame.",
        "Normal map (ControlNet normalbae colours), for a normal ControlNet.",
        "Depth map (near = bright, background black), for a depth ControlNet.",
        "Where the head (or face) covers the frame.",
        "Backend, detector and confidence, frames without a face.",
    )
    FUNCTION = "retarget"
    OUTPUT_NODE = True  # shows a preview of the shaded renders

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "reconstructor": ("HP3_RECONSTRUCTOR", {"tooltip": "From Load HP3 3D Reconstructor."}),
            "source": ("IMAGE", {"tooltip": "Source portrait: its head shape is kept (first image of a batch)."}),
            "driving": ("IMAGE", {"tooltip": "Driving image(s): pose and expression; a batch gives one render per frame."}),
            "mode": ([m.value for m in RetargetMode], {
                "default": "full", "tooltip": "full: pose + expression; pose: pose only; expression: expression only."}),
            "region": (["head", "face"], {"default": "head", "tooltip": "Render the full head or the face only."}),
            "face_index": ("INT", {"default": 0, "min": 0, "max": 16,
                                   "tooltip": "Which face when there are several: 0 = largest."}),
            "missing_face": (["error", "blank maps"], {
                "default": "error", "tooltip": "A driving frame without a face: stop with an error, or give it "
                                              "blank maps and go on."}),
        }}

    def retarget(self, reconstructor, source: torch.Tensor, driving: torch.Tensor, mode: str, region: str,
                 face_index: int, missing_face: str):
        src = comfy_to_numpy(source[:1])[0]
        frames = comfy_to_numpy(driving)
        result = retarget_images(reconstructor, src, frames, mode=mode, face_index=face_index, region=region,
                                 allow_missing=missing_face != "error", source_name="the source image",
                                 on_frame=frame_callback(len(frames)))
        shaded, normal, depth, mask = (torch.cat([getattr(m, k) for m in result.maps]).cpu().float()
                                       for k in ("shaded", "normal", "depth", "mask"))
        result_text = result.report()
        return {"ui": {"images": preview_ui(shaded, "hp3_shaded"), "text": [result_text]},
                "result": (result, shaded, normal, depth, mask, result_text)}
