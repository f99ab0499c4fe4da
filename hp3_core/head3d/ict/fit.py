"""Fitting the ICT head to MediaPipe's 478 landmarks: pose, scale, identity and expression.

The model's landmark points are fixed surface points (the asset's correspondence), linear in
the coefficients: ``X(a, e) = M + sum_j a_j I_j + sum_k e_k E_k`` ([478, 3], centimetres). The
camera is scaled orthographic like the renderer's: image ``x = k (R X)_x + t_x``,
``y = -(k (R X)_y + t_y)``, and MediaPipe's relative depth ``z = -(k (R X)_z + t_z)`` enters with
a small weight (it is noisier than x, y but tells a turned head's depth order).

A few alternations of two small solves, deterministic and with no learned weights:

1. **pose** (R, k, t) for fixed shape: first on the rigid landmarks alone (eye corners, nose,
   forehead), a weighted 3D similarity (Umeyama) to start, then
   Gauss-Newton steps on the anisotropic cost (x, y full weight, z ``Z_WEIGHT``);
2. **coefficients** for a fixed pose: one bounded linear least squares in centimetres (normal
   equations, 155 unknowns per image, built from Gram matrices of the bases precomputed per asset,
   :meth:`LandmarkBases.normal_matrix`; solved with bounds by :func:`box_least_squares`), with
   ridge priors (identity modes are unit-variance PCA modes, so ``IDENTITY_PRIOR * |a|^2``;
   ``EXPRESSION_PRIOR * |e|^2``), expression weights bounded to [0, 1], and a penalty on the
   product of contradictory pairs (smile and frown, look up and down, ...; linearised at the
   previous alternation's weights) so a scream is not explained as smile 0.8 + frown 0.9, while
   either shape alone costs nothing extra.

Identity is solved twice: with expression, under a firm prior (so an open jaw or a blink is
explained by expression, not by a long face or narrow eyes), then alone, with the expressions
held, under a weak prior (so the head takes the person's real proportions).

Several photos of one person share one identity ``a`` (pooled), each with its own pose and
expression. Face-outline points slide along the silhouette as the head turns (they mark the
outline, not a fixed skin point), so they get a lower weight.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ...blas_threads import single_blas_thread
from .asset import ICTHeadAsset

Z_WEIGHT = 0.05
COORDINATE_WEIGHTS = np.array([1.0, 1.0, Z_WEIGHT])  # x, y, z of the camera frame
IDENTITY_PRIOR = 2e-3
IDENTITY_REFINE_PRIOR = 5e-5
EXPRESSION_PRIOR = 3e-3
PAIR_PRIOR = 5e-2
OUTLINE_WEIGHT = 0.3
EYELID_WEIGHT = 4.0
# The face-oval points around the chin: in front of the face, not on the turning silhouette, and
# what tells how far the jaw drops, so they keep full weight.
CHIN_LANDMARKS = (152, 148, 176, 377, 400, 149, 378)
LIP_WEIGHT = 2.0
IDENTITY_BOUND = 4.0          # standard deviations
ALTERNATIONS = 4
GAUSS_NEWTON_STEPS = 3
# MediaPipe landmarks that expressions barely move: eye corners, nose bridge and tip, forehead,
# temples. The first pose is fitted to these alone, so an open mouth cannot drag it.
RIGID_LANDMARKS = (33, 133, 362, 263, 6, 168, 197, 195, 5, 4, 1, 10, 151, 9, 8, 127, 356, 98, 327,
                   108, 337, 69, 299, 55, 285, 193, 417)
# Expression shapes that contradict each other (per side where the FaceKit splits them).
CONTRADICTORY = [("mouthSmile_{s}", "mouthFrown_{s}"), ("eyeLookUp_{s}", "eyeLookDown_{s}"),
                 ("eyeLookIn_{s}", "eyeLookOut_{s}"), ("eyeBlink_{s}", "eyeWide_{s}"),
                 ("browDown_{s}", "browInnerUp_{s}"), ("browDown_{s}", "browOuterUp_{s}"),
                 ("mouthPucker", "mouthStretch_{s}"), ("mouthSmile_{s}", "mouthPucker"),
                 ("jawLeft", "jawRight"), ("mouthLeft", "mouthRight")]


@dataclass
class FitResult:
    """One image's fit.

    Attributes:
        rotation: [3, 3] model frame -> camera frame (x right, y up, z toward the viewer).
        scale: pixels per centimetre.
        translation: [3] pixels, in the camera frame (image ``x = kRX_x + t_x``, ``y = -(kRX_y + t_y)``).
        identity: [I] identity coefficients (shared by the images fitted together).
        expression: [E] expression weights in [0, 1].
        rms_px: RMS 2D landmark error in pixels.
    """

    rotation: np.ndarray
    scale: float
    translation: np.ndarray
    identity: np.ndarray
    expression: np.ndarray
    rms_px: float


class LandmarkBases:
    """The asset's landmark points as linear bases (float64): mean [478, 3], identity [I, 478, 3],
    expression [E, 478, 3], and the per-landmark weights and contradictory-pair index list."""

    def __init__(self, asset: ICTHeadAsset) -> None:
        tri = asset.triangles[asset.mediapipe_triangle]                        # [478, 3]
        bary = asset.mediapipe_barycentric.astype(np.float64)[..., None]        # [478, 3, 1]

        def at_landmarks(v: np.ndarray) -> np.ndarray:                          # [..., V, 3] -> [..., 478, 3]
            # C order: the sum leaves the mode axis innermost, and every product would copy it.
            return np.ascontiguousarray((v[..., tri, :].astype(np.float64) * bary).sum(-2))

        self.mean = at_landmarks(asset.vertices)
        self.identity = at_landmarks(asset.identity)
        self.expression = at_landmarks(asset.expression)
        self.identity_flat = self.identity.reshape(len(self.identity), -1)      # [I, 478*3] views
        self.expression_flat = self.expression.reshape(len(self.expression), -1)
        self.weights = np.ones(len(tri))
        for indices, weight in region_weights():
            self.weights[indices] = weight
        # Weight of the squared residual of landmark n, coordinate i: share[n] * COORDINATE_WEIGHTS[i]
        # (shares sum to 1, so the priors are relative to a mean residual).
        self.share = self.weights / self.weights.sum()
        self.gram = {(a, b): coordinate_gram(getattr(self, a), getattr(self, b), self.share)
                     for a, b in (("identity", "identity"), ("identity", "expression"),
                                  ("expression", "expression"))}
        names = list(asset.expression_names)
        self.pairs = []
        for a, b in CONTRADICTORY:
            for side in ("L", "R"):
                na, nb = a.format(s=side), b.format(s=side)
                if na in names and nb in names and (names.index(na), names.index(nb)) not in self.pairs:
                    self.pairs.append((names.index(na), names.index(nb)))

        self.pair_index = np.array(self.pairs, dtype=np.int64).reshape(-1, 2)

    def pair_penalty(self, previous: np.ndarray) -> np.ndarray:
        """[E] diagonal penalty of the contradictory pairs, linearised at ``previous`` weights:
        ``PAIR_PRIOR * e_b_prev`` on shape a and ``PAIR_PRIOR * e_a_prev`` on shape b, i.e. the
        product ``e_a e_b`` is penalised, not either shape alone (a smile without a frown is free)."""
        out = np.zeros(len(previous))
        a, b = self.pair_index[:, 0], self.pair_index[:, 1]
        np.add.at(out, a, PAIR_PRIOR * previous[b])
        np.add.at(out, b, PAIR_PRIOR * previous[a])
        return out

    def normal_matrix(self, first: str, second: str, rot: np.ndarray) -> np.ndarray:
        """``A_first^T W A_second`` [K, M] for bases rotated by ``rot`` [3, 3] (``first``, ``second``
        in ``identity``/``expression``; A: the design matrix of the rotated basis, W: the residual
        weights). With ``C_j`` the bases' coordinate j, ``(R C)_i = sum_j R_ij C_j``, so the
        product is ``sum_jl (R^T diag(c) R)_jl G_jl``: 9 precomputed K x M Gram matrices instead
        of a [478*3, K] design matrix per pose."""
        mix = rot.T @ (COORDINATE_WEIGHTS[:, None] * rot)                     # [3, 3]
        return np.tensordot(mix, self.gram[(first, second)], axes=([0, 1], [0, 1]))

    def projected_residual(self, basis: str, rot: np.ndarray, residual: np.ndarray) -> np.ndarray:
        """``A^T W r`` [K] of a camera-frame residual [478, 3] (cm), for the basis rotated by ``rot``."""
        v = self.share[:, None] * ((residual * COORDINATE_WEIGHTS) @ rot)     # [478, 3]
        return np.tensordot(getattr(self, basis), v, axes=([1, 2], [0, 1]))

    def points(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """[478, 3] model landmark points (cm) for coefficients [I] and [E]."""
        flat = self.mean.reshape(-1) + identity @ self.identity_flat + expression @ self.expression_flat
        return flat.reshape(-1, 3)


@functools.lru_cache(maxsize=1)
def region_weights() -> list[tuple[np.ndarray, float]]:
    """(MediaPipe landmark indices, weight) of the regions not weighted 1: the face oval (slides
    with the silhouette), the eyelids and the lips (few points that carry blinks and mouth shapes:
    at weight 1 the priors would outvote them)."""
    from mediapipe.python.solutions import face_mesh_connections as conn

    def ids(*sets) -> np.ndarray:
        return np.array(sorted({i for s in sets for e in s for i in e}), dtype=np.int64)

    outline = np.setdiff1d(ids(conn.FACEMESH_FACE_OVAL), CHIN_LANDMARKS)
    return [(outline, OUTLINE_WEIGHT),
            (ids(conn.FACEMESH_LEFT_EYE, conn.FACEMESH_RIGHT_EYE), EYELID_WEIGHT),
            (ids(conn.FACEMESH_LIPS), LIP_WEIGHT)]


def camera_frame(points_px: np.ndarray) -> np.ndarray:
    """MediaPipe points [478, 3] (x right, y down, z away, pixels) -> camera frame (y up, z toward)."""
    return points_px.astype(np.float64) * np.array([1.0, -1.0, -1.0])


def umeyama(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Weighted similarity ``dst ~ k R src + t`` for [N, 3] point sets; returns (R, k, t)."""
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s, d = src - mu_s, dst - mu_d
    cov = (d * w[:, None]).T @ s
    u, sig, vt = np.linalg.svd(cov)
    fix = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ fix @ vt
    k = float(np.trace(np.diag(sig) @ fix) / (w @ (s ** 2).sum(1)))
    return rot, k, mu_d - k * rot @ mu_s


def skew(v: np.ndarray) -> np.ndarray:
    """[N, 3] -> [N, 3, 3] cross-product matrices."""
    z = np.zeros(len(v))
    return np.stack([z, -v[:, 2], v[:, 1], v[:, 2], z, -v[:, 0], -v[:, 1], v[:, 0], z], -1).reshape(-1, 3, 3)


def rotation_from_vector(w: np.ndarray) -> np.ndarray:
    """Rodrigues: axis-angle [3] -> [3, 3]."""
    angle = float(np.linalg.norm(w))
    if angle < 1e-12:
        return np.eye(3)
    k = skew((w / angle)[None])[0]
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def fit_pose(model: np.ndarray, target: np.ndarray, weights: np.ndarray,
             start: tuple[np.ndarray, float, np.ndarray] | None = None
             ) -> tuple[np.ndarray, float, np.ndarray]:
    """(R, k, t) minimising ``sum_i w_i |S (k R X_i + t - P_i)|^2``, S = diag(1, 1, sqrt(Z_WEIGHT))."""
    rot, k, t = start if start is not None else umeyama(model, target, weights)
    s = np.sqrt(COORDINATE_WEIGHTS)
    sw = np.sqrt(weights)[:, None, None]
    for _ in range(GAUSS_NEWTON_STEPS):
        rx = model @ rot.T                                                   # [N, 3]
        r = (k * rx + t - target) * s                                        # [N, 3]
        jac = np.concatenate([-k * skew(rx), k * rx[..., None], np.broadcast_to(np.eye(3), (len(rx), 3, 3))],
                             axis=2) * s[None, :, None] * sw                 # [N, 3, 7]
        jac = jac.reshape(-1, 7)
        step = np.linalg.solve(jac.T @ jac + 1e-9 * np.eye(7), -jac.T @ (r * sw[..., 0]).reshape(-1))
        rot = rotation_from_vector(step[:3]) @ rot
        k *= float(np.exp(step[3]))
        t = t + step[4:]
    return rot, k, t


def coordinate_gram(first: np.ndarray, second: np.ndarray, share: np.ndarray) -> np.ndarray:
    """[3, 3, K, M] ``G_jl = sum_n share_n first[:, n, j] second[:, n, l]^T`` of bases [K, N, 3], [M, N, 3]."""
    # Contiguous: tensordot would otherwise copy it on every use.
    return np.ascontiguousarray(np.einsum("knj,n,mnl->jlkm", first, share, second, optimize=True))


def fit_coefficients(bases: LandmarkBases, targets: list[np.ndarray],
                     poses: list[tuple[np.ndarray, float, np.ndarray]],
                     identity: np.ndarray | None = None,
                     start: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Identity (shared, unless given: then held fixed) and per-image expression for fixed poses.

    Solves the normal equations of the stacked problem directly ([I + n E] unknowns); ``start``
    (the previous solution, same layout) warm-starts the bounded solver.
    """
    n_id, n_ex = bases.identity.shape[0], bases.expression.shape[0]
    solve_id = identity is None
    n = len(targets)
    off = n_id if solve_id else 0
    cols = off + n * n_ex
    hessian, rhs = np.zeros((cols, cols)), np.zeros(cols)
    fixed = bases.mean + (0.0 if solve_id else np.tensordot(identity, bases.identity, axes=1))
    for j, (target, (rot, k, t)) in enumerate(zip(targets, poses)):
        residual = (target - t) / k - fixed @ rot.T
        ex = slice(off + j * n_ex, off + (j + 1) * n_ex)
        penalty = np.full(n_ex, EXPRESSION_PRIOR)
        if start is not None:
            penalty = penalty + bases.pair_penalty(start[ex])
        hessian[ex, ex] += bases.normal_matrix("expression", "expression", rot) + np.diag(penalty)
        rhs[ex] += bases.projected_residual("expression", rot, residual)
        if solve_id:
            hessian[:n_id, :n_id] += bases.normal_matrix("identity", "identity", rot)
            cross = bases.normal_matrix("identity", "expression", rot)
            hessian[:n_id, ex] += cross
            hessian[ex, :n_id] += cross.T
            rhs[:n_id] += bases.projected_residual("identity", rot, residual)
    if solve_id:
        hessian[:n_id, :n_id] += IDENTITY_PRIOR * np.eye(n_id)
    lower = np.concatenate([np.full(off, -IDENTITY_BOUND), np.zeros(n * n_ex)])
    upper = np.concatenate([np.full(off, IDENTITY_BOUND), np.ones(n * n_ex)])
    sol = box_least_squares(hessian, rhs, lower, upper, start=start)
    ident = sol[:n_id] if solve_id else identity
    return ident, [sol[off + j * n_ex: off + (j + 1) * n_ex] for j in range(n)]


def fit_landmarks(bases: LandmarkBases, landmarks_px: list[np.ndarray],
                  identity: np.ndarray | None = None) -> list[FitResult]:
    """Fit one head to each image's MediaPipe landmarks [478, 3] (pixels), sharing one identity.

    Runs with one BLAS thread (:mod:`hp3_core.blas_threads`: spinning BLAS workers would slow
    the rendering that follows).

    Args:
        identity: [I] coefficients to hold fixed (e.g. a source's pooled identity); default:
            solved, shared by all images.
    """
    with single_blas_thread():
        return _fit_landmarks(bases, landmarks_px, identity)


def _fit_landmarks(bases: LandmarkBases, landmarks_px: list[np.ndarray],
                   identity: np.ndarray | None) -> list[FitResult]:
    targets = [camera_frame(p) for p in landmarks_px]
    n_ex = bases.expression.shape[0]
    ident = np.zeros(bases.identity.shape[0]) if identity is None else identity
    expressions = [np.zeros(n_ex) for _ in targets]
    rigid = np.full(len(bases.weights), 1e-3)
    rigid[list(RIGID_LANDMARKS)] = 1.0
    poses: list = [fit_pose(bases.points(ident, e), tgt, rigid) for tgt, e in zip(targets, expressions)]
    for step in range(ALTERNATIONS):
        poses = [fit_pose(bases.points(ident, e), tgt, bases.weights, pose)
                 for tgt, e, pose in zip(targets, expressions, poses)]
        start = None if step == 0 else np.concatenate(([ident] if identity is None else []) + expressions)
        ident, expressions = fit_coefficients(bases, targets, poses, identity, start=start)
    if identity is None:
        ident = refine_identity(bases, targets, poses, expressions)
    poses = [fit_pose(bases.points(ident, e), tgt, bases.weights, pose)
             for tgt, e, pose in zip(targets, expressions, poses)]
    out = []
    for tgt, e, (rot, k, t) in zip(targets, expressions, poses):
        proj = k * bases.points(ident, e) @ rot.T + t
        rms = float(np.sqrt(((proj[:, :2] - tgt[:, :2]) ** 2).sum(1).mean()))
        out.append(FitResult(rotation=rot, scale=k, translation=t, identity=ident.copy(),
                             expression=e, rms_px=rms))
    return out


def refine_identity(bases: LandmarkBases, targets: list[np.ndarray],
                    poses: list[tuple[np.ndarray, float, np.ndarray]], expressions: list[np.ndarray],
                    prior: float = IDENTITY_REFINE_PRIOR) -> np.ndarray:
    """[I] identity for fixed poses and expressions, under the weak final prior (module docstring)."""
    n_id = bases.identity.shape[0]
    hessian, rhs = prior * len(targets) * np.eye(n_id), np.zeros(n_id)
    for target, e, (rot, k, t) in zip(targets, expressions, poses):
        base = bases.mean + np.tensordot(e, bases.expression, axes=1)
        hessian += bases.normal_matrix("identity", "identity", rot)
        rhs += bases.projected_residual("identity", rot, (target - t) / k - base @ rot.T)
    bound = np.full(n_id, IDENTITY_BOUND)
    return box_least_squares(hessian, rhs, -bound, bound)


def box_least_squares(hessian: np.ndarray, rhs: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                      iterations: int = 30, start: np.ndarray | None = None) -> np.ndarray:
    """argmin ``f(x) = x^T H x / 2 - rhs^T x`` over ``lower <= x <= upper`` (H positive definite [n, n]).

    A monotone projected-Newton active-set iteration: variables at a bound whose gradient pushes
    them outward stay fixed, the others get the exact Newton solution, and the step toward it is
    projected onto the box and halved until ``f`` decreases. Without that safeguard the plain
    projected step cycled between two active sets and stopped at the iteration cap, away from the
    minimum; with it the result matches scipy's BVLS to 1e-15 in ``f`` on the fits of the test
    photos, about ten times faster, in a few iterations (the priors keep H well conditioned).
    """
    def objective(x: np.ndarray) -> float:
        return float(0.5 * x @ (hessian @ x) - rhs @ x)

    x = np.clip(np.linalg.solve(hessian, rhs) if start is None else start, lower, upper)
    fx = objective(x)
    for _ in range(iterations):
        grad = hessian @ x - rhs
        fixed = ((x <= lower) & (grad > 0)) | ((x >= upper) & (grad < 0))
        free = ~fixed
        if not free.any():
            break
        newton = x.copy()
        newton[free] = np.linalg.solve(hessian[np.ix_(free, free)], rhs[free] - hessian[np.ix_(free, fixed)] @ x[fixed])
        step = 1.0
        while True:
            new = np.clip(x + step * (newton - x), lower, upper)
            f_new = objective(new)
            if f_new < fx or step < 1e-3:
                break
            step *= 0.5
        if not f_new < fx:  # no descent left: x is the minimum (to rounding)
            break
        moved = np.abs(new - x).max()
        x, fx = new, f_new
        if moved < 1e-7:
            break
    return x
