"""The projection compiled with numba: the CPU backend's `project` (`project(..., compiled=True)`).

`ewa_2d` mirrors `project.ewa_2d` (quaternion and log-scales → 3D covariance → perspective
Jacobian with gsplat's field-of-view clamp → 2D mean and covariance) and `defocus_2d` mirrors
`project.defocus_2d` (dilation, the CoC's variance, the energy-preserving opacity, conics and
boxes; docs/design.md §3), one Gaussian per iteration, with the backward passes written by hand. In PyTorch the same ~40 elementwise ops on
(N,) tensors, forward and backward, cost more than the compositing kernels at 16k Gaussians
(docs/benchmarks.md, "The projection's geometry compiled"). Float64 inside the kernels whatever
the input dtype; outputs in the input dtype.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from dfd_ray.numba_threads import launch
from dfd_ray.splat.project import ALPHA_THRESHOLD, EPS2D, NEAR_PLANE, clamp_limits
from dfd_ray.splat.scene import Camera

NORM_EPS = 1e-12  # torch.nn.functional.normalize's eps: the quaternion's norm is clamped to it


@numba.njit(inline="always")
def _rotation(qw, qx, qy, qz):
    """The 3×3 rotation (row-major, 9 values) of a unit quaternion (w, x, y, z)."""
    return (1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy),
            2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx),
            2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy))


@numba.njit(inline="always")
def _geometry(means, quats, log_scales, i, cam):
    """Everything the forward and backward passes share for Gaussian i: the unit quaternion and its
    norm, the rows of R·S, the 3D covariance's upper triangle, the clamped tx, ty and whether each
    was inside its clamp, and the Jacobian's entries."""
    fx, fy = cam[0], cam[1]
    qw, qx, qy, qz = quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3]
    norm = math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
    inv = 1.0 / max(norm, NORM_EPS)
    q = (qw * inv, qx * inv, qy * inv, qz * inv)
    r = _rotation(q[0], q[1], q[2], q[3])
    s = (math.exp(log_scales[i, 0]), math.exp(log_scales[i, 1]), math.exp(log_scales[i, 2]))
    m = (r[0] * s[0], r[1] * s[1], r[2] * s[2], r[3] * s[0], r[4] * s[1], r[5] * s[2],
         r[6] * s[0], r[7] * s[1], r[8] * s[2])
    s00 = m[0] * m[0] + m[1] * m[1] + m[2] * m[2]
    s01 = m[0] * m[3] + m[1] * m[4] + m[2] * m[5]
    s02 = m[0] * m[6] + m[1] * m[7] + m[2] * m[8]
    s11 = m[3] * m[3] + m[4] * m[4] + m[5] * m[5]
    s12 = m[3] * m[6] + m[4] * m[7] + m[5] * m[8]
    s22 = m[6] * m[6] + m[7] * m[7] + m[8] * m[8]
    x, y, z = means[i, 0], means[i, 1], means[i, 2]
    ux, uy = x / z, y / z
    in_x = -cam[4] <= ux <= cam[5]  # torch.clamp passes the gradient where the bound is not exceeded
    in_y = -cam[6] <= uy <= cam[7]
    tx = z * min(max(ux, -cam[4]), cam[5])
    ty = z * min(max(uy, -cam[6]), cam[7])
    j00, j02 = fx / z, -fx * tx / (z * z)
    j11, j12 = fy / z, -fy * ty / (z * z)
    return (norm, q, r, s, m, (s00, s01, s02, s11, s12, s22), (tx, ty, in_x, in_y), (j00, j02, j11, j12))


@numba.njit(parallel=True, cache=True)
def _forward(means, quats, log_scales, cam):
    """(N, 5): mean x, y (pixels) and the 2D covariance's xx, xy, yy (pixels²)."""
    out = np.empty((means.shape[0], 5))
    for i in numba.prange(means.shape[0]):
        _forward_one(means, quats, log_scales, cam, i, out)  # a call: numba's parfor analysis rejects nested tuples
    return out


@numba.njit(cache=True)
def _forward_one(means, quats, log_scales, cam, i, out):
    _, _, _, _, _, cov, _, jac = _geometry(means, quats, log_scales, i, cam)
    s00, s01, s02, s11, s12, s22 = cov
    j00, j02, j11, j12 = jac
    x, y, z = means[i, 0], means[i, 1], means[i, 2]
    out[i, 0] = cam[0] * x / z + cam[2]
    out[i, 1] = cam[1] * y / z + cam[3]
    out[i, 2] = j00 * j00 * s00 + 2 * j00 * j02 * s02 + j02 * j02 * s22
    out[i, 3] = j00 * j11 * s01 + j00 * j12 * s02 + j02 * j11 * s12 + j02 * j12 * s22
    out[i, 4] = j11 * j11 * s11 + 2 * j11 * j12 * s12 + j12 * j12 * s22


@numba.njit(parallel=True, cache=True)
def _backward(means, quats, log_scales, cam, grad):
    """dL/d(means (N, 3), quats (N, 4), log_scales (N, 3)) from dL/d(the five outputs of `_forward`)."""
    n = means.shape[0]
    g_means, g_quats, g_logs = np.empty((n, 3)), np.empty((n, 4)), np.empty((n, 3))
    for i in numba.prange(n):
        _backward_one(means, quats, log_scales, cam, grad, i, g_means, g_quats, g_logs)
    return g_means, g_quats, g_logs


@numba.njit(cache=True)
def _backward_one(means, quats, log_scales, cam, grad, i, g_means, g_quats, g_logs):
    norm, q, r, s, m, cov, clamp, jac = _geometry(means, quats, log_scales, i, cam)
    s00, s01, s02, s11, s12, s22 = cov
    tx, ty, in_x, in_y = clamp
    j00, j02, j11, j12 = jac
    fx, fy = cam[0], cam[1]
    x, y, z = means[i, 0], means[i, 1], means[i, 2]
    g_mx, g_my, g_xx, g_xy, g_yy = grad[i, 0], grad[i, 1], grad[i, 2], grad[i, 3], grad[i, 4]
    # Through J Σ Jᵀ: the Jacobian's entries and the covariance's upper triangle.
    g_j00 = g_xx * (2 * j00 * s00 + 2 * j02 * s02) + g_xy * (j11 * s01 + j12 * s02)
    g_j02 = g_xx * (2 * j00 * s02 + 2 * j02 * s22) + g_xy * (j11 * s12 + j12 * s22)
    g_j11 = g_yy * (2 * j11 * s11 + 2 * j12 * s12) + g_xy * (j00 * s01 + j02 * s12)
    g_j12 = g_yy * (2 * j11 * s12 + 2 * j12 * s22) + g_xy * (j00 * s02 + j02 * s22)
    g_s00 = g_xx * j00 * j00
    g_s01 = g_xy * j00 * j11
    g_s02 = g_xx * 2 * j00 * j02 + g_xy * j00 * j12
    g_s11 = g_yy * j11 * j11
    g_s12 = g_yy * 2 * j11 * j12 + g_xy * j02 * j11
    g_s22 = g_xx * j02 * j02 + g_xy * j02 * j12 + g_yy * j12 * j12
    # The Jacobian from x, y, z: j00 = fx/z, j02 = -fx tx/z², tx = z clamp(x/z) (and y alike).
    g_tx = -g_j02 * fx / (z * z)
    g_ty = -g_j12 * fy / (z * z)
    g_z = (-g_j00 * fx / (z * z) + g_j02 * 2 * fx * tx / (z * z * z)
           - g_j11 * fy / (z * z) + g_j12 * 2 * fy * ty / (z * z * z))
    g_x = g_mx * fx / z
    g_y = g_my * fy / z
    g_z += -g_mx * fx * x / (z * z) - g_my * fy * y / (z * z)
    if in_x:
        g_x += g_tx
        g_z += g_tx * (tx / z - x / z)
    else:
        g_z += g_tx * tx / z
    if in_y:
        g_y += g_ty
        g_z += g_ty * (ty / z - y / z)
    else:
        g_z += g_ty * ty / z
    g_means[i, 0], g_means[i, 1], g_means[i, 2] = g_x, g_y, g_z
    # Σ = M Mᵀ with M = R S: the rows of M, then R and the scales.
    m0, m1, m2, m3, m4, m5, m6, m7, m8 = m
    gm0 = 2 * g_s00 * m0 + g_s01 * m3 + g_s02 * m6
    gm1 = 2 * g_s00 * m1 + g_s01 * m4 + g_s02 * m7
    gm2 = 2 * g_s00 * m2 + g_s01 * m5 + g_s02 * m8
    gm3 = g_s01 * m0 + 2 * g_s11 * m3 + g_s12 * m6
    gm4 = g_s01 * m1 + 2 * g_s11 * m4 + g_s12 * m7
    gm5 = g_s01 * m2 + 2 * g_s11 * m5 + g_s12 * m8
    gm6 = g_s02 * m0 + g_s12 * m3 + 2 * g_s22 * m6
    gm7 = g_s02 * m1 + g_s12 * m4 + 2 * g_s22 * m7
    gm8 = g_s02 * m2 + g_s12 * m5 + 2 * g_s22 * m8
    g_logs[i, 0] = (gm0 * r[0] + gm3 * r[3] + gm6 * r[6]) * s[0]
    g_logs[i, 1] = (gm1 * r[1] + gm4 * r[4] + gm7 * r[7]) * s[1]
    g_logs[i, 2] = (gm2 * r[2] + gm5 * r[5] + gm8 * r[8]) * s[2]
    g00, g01, g02 = gm0 * s[0], gm1 * s[1], gm2 * s[2]
    g10, g11, g12 = gm3 * s[0], gm4 * s[1], gm5 * s[2]
    g20, g21, g22 = gm6 * s[0], gm7 * s[1], gm8 * s[2]
    qw, qx, qy, qz = q
    gw = 2 * (-qz * g01 + qy * g02 + qz * g10 - qx * g12 - qy * g20 + qx * g21)
    gx = 2 * (qy * g01 + qz * g02 + qy * g10 - 2 * qx * g11 - qw * g12 + qz * g20 + qw * g21 - 2 * qx * g22)
    gy = 2 * (-2 * qy * g00 + qx * g01 + qw * g02 + qx * g10 + qz * g12 - qw * g20 + qz * g21 - 2 * qy * g22)
    gz = 2 * (-2 * qz * g00 - qw * g01 + qx * g02 + qw * g10 - 2 * qz * g11 + qy * g12 + qx * g20 + qy * g21)
    # The quaternion's normalisation q / max(|q|, eps).
    if norm > NORM_EPS:
        dot = qw * gw + qx * gx + qy * gy + qz * gz
        g_quats[i, 0] = (gw - qw * dot) / norm
        g_quats[i, 1] = (gx - qx * dot) / norm
        g_quats[i, 2] = (gy - qy * dot) / norm
        g_quats[i, 3] = (gz - qz * dot) / norm
    else:
        g_quats[i, 0], g_quats[i, 1], g_quats[i, 2], g_quats[i, 3] = (
            gw / NORM_EPS, gx / NORM_EPS, gy / NORM_EPS, gz / NORM_EPS)


@numba.njit(inline="always")
def _blurred(xx, xy, yy, logit, coc, has_coc, eps2d):
    """(a, b, c, det, o, det0, ratio, opacity) of one image's splat: the dilated and blurred
    covariance entries and determinant, the sigmoid of the logit, the unblurred determinant, their
    ratio det0 / det and the energy-preserving opacity o·sqrt(ratio)."""
    a, b, c = xx + eps2d, xy, yy + eps2d
    o = 1.0 / (1.0 + math.exp(-logit))
    det0 = a * c - b * b
    if not has_coc:
        return a, b, c, det0, o, det0, 1.0, o
    var = coc * coc / 16.0
    a += var
    c += var
    det = a * c - b * b
    ratio = det0 / det
    return a, b, c, det, o, det0, ratio, o * math.sqrt(ratio)


@numba.njit(parallel=True, cache=True)
def _defocus_forward(cov, logits, depths, coc, has_coc, eps2d):
    """(conics (B, N, 3), opacities (B, N), radii (B, N, 2)) from the covariances `cov` (N, 3) and
    the CoC (B, N) pixels (ignored unless `has_coc`)."""
    n_img, n = coc.shape
    conics, opacities, radii = np.empty((n_img, n, 3)), np.empty((n_img, n)), np.empty((n_img, n, 2), np.int64)
    cut = 1.0 / ALPHA_THRESHOLD
    for i in numba.prange(n):
        for b in range(n_img):
            a, bb, c, det, _, _, _, opacity = _blurred(cov[i, 0], cov[i, 1], cov[i, 2], logits[i], coc[b, i],
                                                      has_coc, eps2d)
            if not depths[i] >= NEAR_PLANE:
                opacity = 0.0
            conics[b, i, 0], conics[b, i, 1], conics[b, i, 2] = c / det, -bb / det, a / det
            opacities[b, i] = opacity
            extend = math.sqrt(2.0 * math.log(max(opacity * cut, 1.0)))
            radii[b, i, 0] = math.ceil(extend * math.sqrt(a))
            radii[b, i, 1] = math.ceil(extend * math.sqrt(c))
    return conics, opacities, radii


@numba.njit(parallel=True, cache=True)
def _defocus_backward(cov, logits, depths, coc, has_coc, eps2d, g_conics, g_opacities):
    """dL/d(cov (N, 3), logits (N,), coc (B, N)) from dL/d(conics, opacities)."""
    n_img, n = coc.shape
    g_cov, g_logits, g_coc = np.zeros((n, 3)), np.zeros(n), np.zeros((n_img, n))
    for i in numba.prange(n):
        for b in range(n_img):
            a, bb, c, det, o, det0, ratio, _ = _blurred(cov[i, 0], cov[i, 1], cov[i, 2], logits[i], coc[b, i],
                                                       has_coc, eps2d)
            g0, g1, g2 = g_conics[b, i, 0], g_conics[b, i, 1], g_conics[b, i, 2]
            g_o = g_opacities[b, i] if depths[i] >= NEAR_PLANE else 0.0
            # conics = (c, -b, a) / det
            g_a, g_b, g_c = g2 / det, -g1 / det, g0 / det
            g_det = -(g0 * c - g1 * bb + g2 * a) / (det * det)
            g_det0 = 0.0
            if has_coc:  # opacity = o sqrt(det0 / det)
                root = math.sqrt(ratio)
                g_ratio = g_o * o * 0.5 / root if root > 0.0 else 0.0
                g_det0 = g_ratio / det
                g_det -= g_ratio * det0 / (det * det)
                g_o *= root
            g_a += g_det * c
            g_c += g_det * a
            g_b -= 2.0 * bb * g_det
            if has_coc:  # a = a0 + coc²/16, c = c0 + coc²/16, det0 = a0 c0 - b²
                a0, c0 = a - coc[b, i] * coc[b, i] / 16.0, c - coc[b, i] * coc[b, i] / 16.0
                g_coc[b, i] = (g_a + g_c) * coc[b, i] / 8.0
                g_a += g_det0 * c0
                g_c += g_det0 * a0
                g_b -= 2.0 * bb * g_det0
            g_cov[i, 0] += g_a
            g_cov[i, 1] += g_b
            g_cov[i, 2] += g_c
            g_logits[i] += g_o * o * (1.0 - o)
    return g_cov, g_logits, g_coc


def _as_kernel_input(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().double().numpy())


class _Ewa(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, log_scales, cam):
        args = (_as_kernel_input(means), _as_kernel_input(quats), _as_kernel_input(log_scales), cam)
        ctx.args = args
        ctx.dtypes = (means.dtype, quats.dtype, log_scales.dtype)
        return torch.from_numpy(launch(_forward, *args)).to(means.dtype)

    @staticmethod
    def backward(ctx, grad):
        grads = launch(_backward, *ctx.args, _as_kernel_input(grad))
        return (*(torch.from_numpy(g).to(dtype) for g, dtype in zip(grads, ctx.dtypes)), None)


def ewa_2d(means: torch.Tensor, quats: torch.Tensor, log_scales: torch.Tensor,
           camera: Camera) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """As `project.ewa_2d`, on CPU tensors: means2d (N, 2) pixels and the 2D covariance's xx, xy, yy
    (N,) pixels², without dilation."""
    cam = np.array([camera.fx, camera.fy, camera.cx, camera.cy, *clamp_limits(camera)], np.float64)
    out = _Ewa.apply(means, quats, log_scales, cam)
    return out[:, :2], out[:, 2], out[:, 3], out[:, 4]


class _Defocus(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cov, logits, depths, coc, has_coc, eps2d):
        args = (_as_kernel_input(cov), _as_kernel_input(logits), _as_kernel_input(depths), _as_kernel_input(coc),
                has_coc, eps2d)
        ctx.args = args
        ctx.dtypes = (cov.dtype, logits.dtype, coc.dtype)
        conics, opacities, radii = launch(_defocus_forward, *args)
        radii = torch.from_numpy(radii)
        ctx.mark_non_differentiable(radii)
        return torch.from_numpy(conics).to(cov.dtype), torch.from_numpy(opacities).to(cov.dtype), radii

    @staticmethod
    def backward(ctx, g_conics, g_opacities, _):
        grads = launch(_defocus_backward, *ctx.args, _as_kernel_input(g_conics), _as_kernel_input(g_opacities))
        g_cov, g_logits, g_coc = (torch.from_numpy(g).to(dtype) for g, dtype in zip(grads, ctx.dtypes))
        return g_cov, g_logits, None, g_coc if ctx.args[4] else None, None, None


def defocus_2d(cov_xx: torch.Tensor, cov_xy: torch.Tensor, cov_yy: torch.Tensor, opacity_logits: torch.Tensor,
               depths: torch.Tensor, coc: torch.Tensor | None,
               eps2d: float = EPS2D) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As `project.defocus_2d`, on CPU tensors: conics (B, N, 3), opacities (B, N), radii (B, N, 2)."""
    cov = torch.stack([cov_xx, cov_xy, cov_yy], -1)
    has_coc = coc is not None
    coc = coc if has_coc else cov_xx.new_zeros(1, cov_xx.shape[0])
    return _Defocus.apply(cov, opacity_logits, depths, coc, has_coc, eps2d)
