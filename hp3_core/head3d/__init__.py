"""HP3's 3D reconstruction module: head parameters from images, retargeting, head meshes.

Conventions shared by every backend (see :mod:`hp3_core.head3d.camera`):

* **model frame**: right-handed, x to the subject's left (image right for a frontal face), y up,
  z toward the camera; a head model's ``vertices(params)`` are posed (global rotation applied)
  in this frame, in the model's own units (FLAME: metres).
* **camera**: orthographic, SMIRK's ``(s, tx, ty)``: normalised crop coordinates are
  ``s * (x + tx), -s * (y + ty)`` in [-1, 1] over the crop.
* **crop**: a 3x3 affine matrix mapping image pixels to crop pixels (crop is ``crop_size``
  square); its inverse takes projected points back to the full image.
* **screen vertices** (what the renderer takes): x, y in pixels of the target image
  (x right, y down, pixel centres at +0.5) and z in the same pixel units, **smaller = nearer**.
"""
