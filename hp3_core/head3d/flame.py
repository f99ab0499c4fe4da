"""The FLAME 2020 head model in torch: shape, expression, pose and SMIRK's eyelids to vertices.

Frame: FLAME's native one, as in :mod:`hp3_core.head3d`: right-handed, y up, z toward the
camera, x to the subject's left; metres. Joints (FLAME order): 0 global/root, 1 neck, 2 jaw,
3 left eye, 4 right eye.

The forward pass is FLAME's linear blend skinning:

1. ``v_shaped = v_template + shapedirs @ [shape, expression]``;
2. joints ``J = J_regressor @ v_shaped`` (precomputed as ``J_template + J_shapedirs @ betas``,
   which is the same linear map);
3. per-joint rotation matrices from axis-angle (Rodrigues);
4. ``v_posed = v_shaped + posedirs @ (R_j - I for the non-global joints j = 1..4)``;
5. world transforms along the kinematic chain, each joint rotating about its rest position;
6. ``v = sum_j w_vj * G_j(v_posed)``.

SMIRK's eyelid blendshapes (``l_eyelid.npy``, ``r_eyelid.npy``) are then added, as SMIRK's
``FLAME.forward`` does: **after** skinning, in the model frame (they are not rotated by the
global or neck pose), ``v += eyelids[:, 0] * l_eyelid + eyelids[:, 1] * r_eyelid``.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from ..errors import HP3Error
from .flame_file import FlameAssets

log = logging.getLogger(__name__)

NUM_JOINTS = 5


class FlameParameterError(HP3Error):
    """Parameters that the loaded FLAME model cannot take (more components than it has...)."""


def batch_rodrigues(rot_vecs: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Rotation matrices from axis-angle vectors.

    Args:
        rot_vecs: [N, 3] axis * angle (radians).
        eps: the angle is ``sqrt(|r|^2 + eps^2)``: a zero vector gives exactly the identity with
            the right gradient (d R / d r = [dr]_x), and any other angle is exact to
            ``eps^2 / |r|`` (SMIRK/DECA's ``|r + eps|`` is off by about ``eps``).

    Returns:
        [N, 3, 3] rotation matrices (``R @ p`` rotates column vectors ``p``).
    """
    angle = torch.sqrt(rot_vecs.square().sum(dim=1, keepdim=True) + eps * eps)  # [N, 1]
    axis = rot_vecs / angle
    cos, sin = torch.cos(angle)[:, :, None], torch.sin(angle)[:, :, None]
    rx, ry, rz = axis.unbind(dim=1)
    zeros = torch.zeros_like(rx)
    k = torch.stack([zeros, -rz, ry, rz, zeros, -rx, -ry, rx, zeros], dim=1).view(-1, 3, 3)
    ident = torch.eye(3, dtype=rot_vecs.dtype, device=rot_vecs.device)
    return ident + sin * k + (1.0 - cos) * (k @ k)


class FlameModel(nn.Module):
    """FLAME 2020 as a torch module with buffers only (no trainable parameters).

    Args:
        assets: the model's arrays (:func:`~hp3_core.head3d.flame_file.load_flame`).
        dtype: floating dtype of the buffers (inputs are cast to it).

    Buffers: ``v_template`` [V, 3], ``shapedirs_flat`` [K, V*3] (row k is component k, column
    ``3 * v + axis``; :attr:`shapedirs` gives FLAME's [V, 3, K] view), ``posedirs`` [36, V*3],
    ``J_template`` [5, 3], ``J_shapedirs`` [K, 5*3], ``J_regressor`` [5, V], ``lbs_weights``
    [V, 5], ``faces_tensor`` [F, 3] long, ``eyelid_dirs`` [2, V, 3] (zeros when absent),
    ``face_vertex_mask`` [V] bool.

    Only the components actually given are read (coefficients past the given ones are zero),
    so SMIRK's 300 + 50 costs less than 300 + 100; a B=1 forward at FLAME's 5023 vertices
    takes 1-2 ms on one CPU core.
    """

    def __init__(self, assets: FlameAssets, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if assets.num_joints != NUM_JOINTS:
            raise ValueError(f"FLAME needs {NUM_JOINTS} joints, the assets have {assets.num_joints}")
        self.n_shape = int(assets.n_shape or 0)
        self.n_expression = int(assets.n_expression)
        self.has_eyelids = assets.eyelids is not None
        self.parents: list[int] = [int(p) for p in assets.parents]

        def buf(name: str, value: np.ndarray, dt: torch.dtype = dtype) -> None:
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(value)).to(dt))

        j_template = assets.J_regressor @ assets.v_template
        j_shapedirs = np.einsum("jv,vdk->kjd", assets.J_regressor, assets.shapedirs)
        n_v, n_k = assets.num_vertices, assets.shapedirs.shape[2]
        buf("v_template", assets.v_template)
        # [K, V*3], contiguous: one matrix-vector product reads it front to back (3x faster
        # than FLAME's [V, 3, K] on a CPU).
        buf("shapedirs_flat", assets.shapedirs.reshape(n_v * 3, n_k).T)
        buf("posedirs", assets.posedirs)
        buf("J_regressor", assets.J_regressor)
        buf("J_template", j_template)
        buf("J_shapedirs", j_shapedirs.reshape(n_k, -1))
        buf("lbs_weights", assets.lbs_weights)
        buf("faces_tensor", assets.faces, torch.long)
        buf("eyelid_dirs", assets.eyelids if assets.eyelids is not None else np.zeros((2, n_v, 3)))
        if assets.face_vertex_ids is not None:
            mask = np.zeros(n_v, bool)
            mask[assets.face_vertex_ids] = True
            self.face_region_source = "face_vertex_ids"
        else:
            mask = self._geometric_face_mask(assets.v_template, j_template)
            self.face_region_source = "geometric fallback"
        buf("face_vertex_mask", mask, torch.bool)

    # ----------------------------------------------------------------------------------------
    @staticmethod
    def _geometric_face_mask(v_template: np.ndarray, joints: np.ndarray) -> np.ndarray:
        """Fallback face region: template vertices in front of the middle of the head's depth
        (z above the bounding box's z-centre) and above the neck joint (y > joint 1's y)."""
        z_mid = 0.5 * (v_template[:, 2].min() + v_template[:, 2].max())
        return (v_template[:, 2] > z_mid) & (v_template[:, 1] > joints[1, 1])

    @property
    def faces(self) -> torch.Tensor:
        """[F, 3] LongTensor of vertex indices, counter-clockwise seen from outside."""
        return self.faces_tensor

    @property
    def shapedirs(self) -> torch.Tensor:
        """[V, 3, K] view of the shape (first ``n_shape``) and expression components."""
        n_k = self.shapedirs_flat.shape[0]
        return self.shapedirs_flat.T.reshape(self.num_vertices, 3, n_k)

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    def face_subset(self) -> torch.Tensor:
        """BoolTensor [F]: triangles whose three vertices are all in the face region.

        The region is ``FLAME_masks.pkl['face']`` when the assets had it, else the geometric
        fallback of :meth:`_geometric_face_mask` (``self.face_region_source`` says which).
        """
        return self.face_vertex_mask[self.faces_tensor].all(dim=1)

    # ----------------------------------------------------------------------------------------
    def _coeffs(self, x: torch.Tensor, n: int, what: str, batch: int) -> torch.Tensor:
        """``x`` checked and cast; not padded (missing trailing components count as zero)."""
        if x.ndim != 2 or x.shape[0] != batch:
            raise ValueError(f"{what} must be [{batch}, n], got {tuple(x.shape)}")
        if x.shape[1] > n:
            raise FlameParameterError(
                f"{x.shape[1]} FLAME {what} components were given but the loaded FLAME model has "
                f"{n}. Fix: use FLAME 2020 generic_model.pkl (300 shape, 100 expression) or pass "
                f"at most {n}")
        return x.to(self.v_template.dtype)

    def _rot(self, x: torch.Tensor | None, width: int, what: str, batch: int,
             ref: torch.Tensor) -> torch.Tensor:
        if x is None:
            return ref.new_zeros(batch, width)
        if tuple(x.shape) != (batch, width):
            raise ValueError(f"{what} must be [{batch}, {width}], got {tuple(x.shape)}")
        return x.to(ref.dtype)

    def forward(self, shape: torch.Tensor, expression: torch.Tensor, global_pose: torch.Tensor,
                jaw: torch.Tensor, neck: torch.Tensor | None = None,
                eyes: torch.Tensor | None = None,
                eyelids: torch.Tensor | None = None) -> torch.Tensor:
        """Posed vertices.

        Args:
            shape: [B, <= n_shape] shape coefficients (zero-padded to ``n_shape``).
            expression: [B, <= n_expression] expression coefficients (zero-padded).
            global_pose: [B, 3] axis-angle (radians) of the root joint, about its rest position.
            jaw: [B, 3] axis-angle of the jaw joint.
            neck: [B, 3] axis-angle of the neck joint (zeros when None).
            eyes: [B, 6] axis-angles of the left then right eye joint (zeros when None).
            eyelids: [B, 2] SMIRK eyelid parameters (left, right); None adds nothing.

        Returns:
            [B, V, 3] vertices in FLAME's frame, metres.

        Raises:
            FlameParameterError: more components than the model has, or eyelids given to a
                model loaded without eyelid blendshapes.
        """
        return self.forward_with_joints(shape, expression, global_pose, jaw, neck, eyes,
                                        eyelids)[0]

    def forward_with_joints(self, shape: torch.Tensor, expression: torch.Tensor,
                            global_pose: torch.Tensor, jaw: torch.Tensor,
                            neck: torch.Tensor | None = None, eyes: torch.Tensor | None = None,
                            eyelids: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`forward`, and also the posed joints [B, 5, 3] (metres)."""
        batch = shape.shape[0]
        shape = self._coeffs(shape, self.n_shape, "shape", batch)
        expression = self._coeffs(expression, self.n_expression, "expression", batch)
        ref = shape
        pose = torch.cat([self._rot(global_pose, 3, "global_pose", batch, ref),
                          self._rot(neck, 3, "neck", batch, ref),
                          self._rot(jaw, 3, "jaw", batch, ref),
                          self._rot(eyes, 6, "eyes", batch, ref)], dim=1)

        # 1-2. Shape blendshapes and joints of the shaped mesh.
        # Components past those given are zero: multiply by the given rows only.
        n_v, n_s, n_e = self.v_template.shape[0], shape.shape[1], expression.shape[1]
        offsets = shape @ self.shapedirs_flat[:n_s]
        offsets = offsets + expression @ self.shapedirs_flat[self.n_shape:self.n_shape + n_e]
        j_offsets = shape @ self.J_shapedirs[:n_s]
        j_offsets = j_offsets + expression @ self.J_shapedirs[self.n_shape:self.n_shape + n_e]
        v_shaped = self.v_template + offsets.view(batch, n_v, 3)
        joints = self.J_template + j_offsets.view(batch, NUM_JOINTS, 3)

        # 3-4. Rotations and pose-corrective blendshapes.
        rot = batch_rodrigues(pose.reshape(-1, 3)).view(batch, NUM_JOINTS, 3, 3)
        ident = torch.eye(3, dtype=rot.dtype, device=rot.device)
        pose_feature = (rot[:, 1:] - ident).reshape(batch, -1)
        v_posed = v_shaped + (pose_feature @ self.posedirs).view(batch, n_v, 3)

        # 5. World rotation and translation of every joint along the chain.
        world_r = [rot[:, 0]]
        world_t = [joints[:, 0]]
        for j in range(1, NUM_JOINTS):
            p = self.parents[j]
            rel = (joints[:, j] - joints[:, p]).unsqueeze(-1)
            world_r.append(world_r[p] @ rot[:, j])
            world_t.append((world_r[p] @ rel).squeeze(-1) + world_t[p])
        r_all = torch.stack(world_r, dim=1)  # [B, J, 3, 3]
        posed_joints = torch.stack(world_t, dim=1)  # [B, J, 3]
        # Transform relative to the rest pose: x -> R_j x + (t_j - R_j J_j).
        t_rel = posed_joints - (r_all @ joints.unsqueeze(-1)).squeeze(-1)
        mats = torch.cat([r_all, t_rel.unsqueeze(-1)], dim=-1).reshape(batch, NUM_JOINTS, 12)

        # 6. Linear blend skinning.
        blended = (self.lbs_weights @ mats).view(batch, n_v, 3, 4)
        verts = (blended[..., :3] @ v_posed.unsqueeze(-1)).squeeze(-1) + blended[..., 3]

        if eyelids is not None:
            if not self.has_eyelids:
                raise FlameParameterError(
                    "eyelid parameters were given but the FLAME model was loaded without eyelid "
                    "blendshapes. Fix: put SMIRK's l_eyelid.npy and r_eyelid.npy beside the FLAME "
                    "model (load_flame(..., eyelids=folder))")
            lids = self._rot(eyelids, 2, "eyelids", batch, ref)
            verts = verts + torch.einsum("bk,kvd->bvd", lids, self.eyelid_dirs)
        return verts, posed_joints
