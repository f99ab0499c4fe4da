"""``bench retarget``: time per image of 3D reconstruction and rendering at 512x512 on this machine.

Measured on the bundled sample images (workflows/inputs) resized to 512x512: MediaPipe
reconstruction of a driving image, retargeting, and rendering of the four maps; the full-head
render of a FLAME-sized mesh (a generated head-shaped ellipsoid, 5024 vertices); and pytorch3d's
rasterizer side by side when it imports. The last line is machine-readable:
``retarget_ms_per_image: <median ms, reconstruction + rendering, 512x512>`` of the default backend
(``ict``, the built-in full head; the face-only ``mediapipe`` backend is measured beside it).
"""
from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..head3d.ict import ICTReconstructor
from ..head3d.reconstructor import MediaPipeReconstructor, reconstruct
from ..head3d.render_head import render_heads, screen_vertices
from ..head3d.retarget import retarget
from ..image_io import load_image
from ..render import render_maps
from ..render.rasterizer import rasterize
from .meshes import flame_sized_head
from .report import write_report

log = logging.getLogger(__name__)
SAMPLES = Path(__file__).resolve().parents[2] / "workflows" / "inputs"


def _median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def _pytorch3d_available() -> bool:
    try:
        import pytorch3d  # noqa: F401
    except ImportError:
        return False
    return True


def run(repeats: int = 20, size: int = 512, threads: int | None = None) -> dict[str, float]:
    """Measure and return the medians (ms); logs a table as it goes."""
    if threads:
        torch.set_num_threads(threads)
    def sample(name: str) -> np.ndarray:
        return np.asarray(Image.fromarray(load_image(SAMPLES / name)).resize((size, size), Image.BICUBIC))
    source, driving = sample("source_s42.jpg"), sample("driving_d9.jpg")
    rec = MediaPipeReconstructor()
    src = reconstruct(rec, [source]).params

    def reconstruct_driving():
        return reconstruct(rec, [driving]).params

    drv = reconstruct_driving()
    heads = retarget(src, drv)
    results = {
        "mediapipe reconstruct (landmarks + fit)": _median_ms(reconstruct_driving, repeats),
        "mediapipe render 4 maps (852 triangles)": _median_ms(lambda: render_heads(heads, rec.head_model), repeats),
        "mediapipe end to end (reconstruct + retarget + render)": _median_ms(
            lambda: render_heads(retarget(src, reconstruct_driving()), rec.head_model), repeats),
    }
    results.update(_backend_times(ICTReconstructor(), "ict", source, driving, repeats))
    verts = screen_vertices(heads, rec.head_model)
    results["rasterize only, torch (852 triangles)"] = _median_ms(
        lambda: rasterize(verts, rec.head_model.faces, size, size), repeats)
    flame_verts, flame_faces = flame_sized_head(size)
    results["render 4 maps, FLAME-sized head (torch)"] = _median_ms(
        lambda: render_maps(flame_verts, flame_faces, size, size), repeats)
    results["rasterize only, FLAME-sized head (torch)"] = _median_ms(
        lambda: rasterize(flame_verts, flame_faces, size, size), repeats)
    if _pytorch3d_available():
        results["rasterize only, torch vs pytorch3d: pytorch3d (852 triangles)"] = _median_ms(
            lambda: rasterize(verts, rec.head_model.faces, size, size, backend="pytorch3d"), repeats)
        results["rasterize only, FLAME-sized head (pytorch3d)"] = _median_ms(
            lambda: rasterize(flame_verts, flame_faces, size, size, backend="pytorch3d"), repeats)
    else:
        log.info("pytorch3d is not installed: no side-by-side with it (pip has no wheel for this torch)")
    return results


def _backend_times(rec, label: str, source: np.ndarray, driving: np.ndarray, repeats: int) -> dict[str, float]:
    """Fit, render and end-to-end medians (ms) of one backend on the sample pair."""
    src = reconstruct(rec, [source]).params

    def reconstruct_driving():
        return reconstruct(rec, [driving]).params

    heads = retarget(src, reconstruct_driving())
    triangles = len(rec.head_model.faces)
    return {
        f"{label} reconstruct (landmarks + fit)": _median_ms(reconstruct_driving, repeats),
        f"{label} render 4 maps ({triangles} triangles)": _median_ms(lambda: render_heads(heads, rec.head_model), repeats),
        f"{label} end to end (reconstruct + retarget + render)": _median_ms(
            lambda: render_heads(retarget(src, reconstruct_driving()), rec.head_model), repeats),
    }


def main(repeats: int = 20) -> int:
    import os
    results = run(repeats=repeats)
    width = max(len(k) for k in results)
    lines = [f"bench retarget: 512x512, median of {repeats} runs, {torch.get_num_threads()} torch threads, "
             f"{os.cpu_count()} CPUs, torch {torch.__version__}"]
    lines += [f"  {k:<{width}}  {v:8.2f} ms" for k, v in results.items()]
    end_to_end = results["ict end to end (reconstruct + retarget + render)"]
    write_report(lines, {"retarget_ms_per_image": end_to_end}, digits=2)
    return 0
