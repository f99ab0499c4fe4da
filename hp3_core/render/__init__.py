"""HP3's renderer: a plain-torch z-buffer rasterizer and the condition maps drawn with it.

:func:`rasterize` turns screen-space triangles (see :mod:`hp3_core.head3d` for the conventions)
into per-pixel fragments; :func:`render_maps` draws the grey shaded render, the ControlNet
normal and depth maps and the coverage mask that condition the diffusion model;
:func:`blank_maps` gives the same maps for an empty scene.
"""
from .maps import RenderedMaps, blank_maps, render_maps
from .rasterizer import Fragments, rasterize

__all__ = ["Fragments", "RenderedMaps", "blank_maps", "rasterize", "render_maps"]
