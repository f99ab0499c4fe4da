"""Nodes of the 3D module: load a reconstructor; retarget a source head onto driving frames."""
from __future__ import annotations

import torch

from ..hp3_core.head3d.reconstructor import BACKENDS, FLAME_FILES, SMIRK_FILES, build_reconstructor, find_file
from ..hp3_core.head3d.retarget import RetargetMode
from ..hp3_core.head3d.retarget_images import check_face_index, check_smoothing, retarget_images
from . import input_checks, model_folders, sockets
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
            "backend": (list(BACKENDS), {
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
        input_checks.choice("backend", backend, BACKENDS)
        input_checks.choice("device", device, ("cpu", "gpu"))
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
            "source": ("IMAGE", {"tooltip": "Source portrait: its head shape is kept. A batch = several photos of one person, pooled "
                                            "into one head shape (pose and expression modes use the first)."}),
            "driving": ("IMAGE", {"tooltip": "Driving image(s): pose and expression; a batch gives one render per frame."}),
            "mode": ([m.value for m in RetargetMode], {
                "default": "full", "tooltip": "full: pose + expression; pose: pose only; expression: expression only."}),
            "region": (["head", "face"], {"default": "head", "tooltip": "Render the full head or the face only."}),
            "face_index": ("INT", {"default": 0, "min": 0, "max": 16,
                                   "tooltip": "Which face when there are several: 0 = largest."}),
            "missing_face": (["error", "blank maps"], {
                "default": "error", "tooltip": "A driving frame without a face: stop with an error, or give it "
                                              "blank maps and go on."}),
        }, "optional": {
            # Optional and last, so workflows saved before they existed still load and run as before.
            "driving_face_index": ("INT", {"default": 0, "min": 0, "max": 16,
                                           "tooltip": "Which face of the driving frames when there are several: "
                                                      "0 = largest (face_index chooses the source's)."}),
            "smoothing": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.99, "step": 0.05,
                                    "tooltip": "Temporal smoothing of the driving frames' heads, in order "
                                               "(a video batch): 0 = off, 0.5 = each frame keeps half its own "
                                               "weight, 0.9 = very smooth. Frames of one shot only."}),
        }}

    def retarget(self, reconstructor, source: torch.Tensor, driving: torch.Tensor, mode: str, region: str,
                 face_index: int, missing_face: str, driving_face_index: int = 0, smoothing: float = 0.0):
        check_inputs(reconstructor, source, driving, mode, region, missing_face)
        face_index = check_face_index(face_index, "face_index")
        driving_face_index = check_face_index(driving_face_index, "driving_face_index")
        smoothing = check_smoothing(smoothing, "smoothing")
        # Frames are handed over as views of the IMAGE batch: each is reduced for face analysis
        # before any uint8 copy is made (see hp3_core.image_io.analysis_image).
        frames = [driving[i] for i in range(driving.shape[0])]
        result = retarget_images(reconstructor, source[0], frames, mode=mode, face_index=face_index,
                                 driving_face_index=driving_face_index, region=region,
                                 allow_missing=missing_face != "error", source_name="the source image",
                                 on_frame=frame_callback(len(frames)), smoothing=smoothing,
                                 more_sources=[source[i] for i in range(1, source.shape[0])])
        shaded, normal, depth, mask = result.stacked()
        result_text = result.report()
        return {"ui": {"images": preview_ui(shaded, "hp3_shaded"), "text": [result_text]},
                "result": (result, shaded, normal, depth, mask, result_text)}


def check_inputs(reconstructor, source, driving, mode: str, region: str, missing_face: str) -> None:
    """The retarget node's inputs, each failure an HP3Error naming the input and the fix."""
    sockets.reconstructor(reconstructor)
    input_checks.image_batch("source", source)
    input_checks.image_batch("driving", driving)
    input_checks.choice("mode", mode, [m.value for m in RetargetMode])
    input_checks.choice("region", region, ("head", "face"))
    input_checks.choice("missing_face", missing_face, ("error", "blank maps"))
