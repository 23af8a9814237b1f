"""The sparse compositor against a dense all-pairs oracle, and the physics of the defocus blur."""

import math

import pytest
import torch

from dfd_ray.splat import Camera, SceneSplats, render
from dfd_ray.splat.composite_torch import MAX_ALPHA, T_MIN
from dfd_ray.splat.project import ALPHA_THRESHOLD, project, quat_to_rotmat, thin_lens_coc_px
from tests.splat_helpers import CAM, random_splats

def dense_oracle(splats: SceneSplats, **kwargs):
    """All (pixel, Gaussian) pairs, Gaussians visited front to back one by one, as gsplat's kernel does."""
    cam = splats.camera
    p = project(splats, **kwargs)
    means2d, conics, opacities, depths = p.means2d[0], p.conics[0], p.opacities[0], p.depths[0]
    ys, xs = torch.meshgrid(torch.arange(cam.height, dtype=means2d.dtype),
                            torch.arange(cam.width, dtype=means2d.dtype), indexing="ij")
    T = torch.ones(cam.height, cam.width, dtype=means2d.dtype)
    done = torch.zeros(cam.height, cam.width, dtype=torch.bool)
    image = torch.zeros(cam.height, cam.width, 3, dtype=means2d.dtype)
    depth = torch.zeros(cam.height, cam.width, dtype=means2d.dtype)
    for i in torch.argsort(depths, stable=True).tolist():
        dx, dy = xs + 0.5 - means2d[i, 0], ys + 0.5 - means2d[i, 1]
        a, b, c = conics[i]
        power = 0.5 * (a * dx**2 + c * dy**2) + b * dx * dy
        alpha = torch.clamp_max(opacities[i] * torch.exp(-power), MAX_ALPHA)
        use = (alpha >= ALPHA_THRESHOLD) & (power >= 0) & ~done
        next_T = T * (1 - alpha)
        stop = use & (next_T <= T_MIN)
        done = done | stop
        use = use & ~stop
        w = torch.where(use, alpha * T, torch.zeros_like(alpha))
        image = image + w[..., None] * splats.colors[i]
        depth = depth + w * depths[i]
        T = torch.where(use, next_T, T)
    acc = 1 - T
    return image, depth / acc.clamp_min(1e-10), acc


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm().clamp_min(1e-30))


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("mode", ["pinhole", "focus", "coc_map"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_matches_dense_oracle_values_and_gradients(mode, seed, backend):
    splats = random_splats(40, seed).requires_grad_()
    kwargs = {}
    if mode == "focus":
        kwargs = {"focus_distance": torch.tensor(0.3, dtype=torch.float64, requires_grad=True)}
    elif mode == "coc_map":
        g = torch.Generator().manual_seed(seed)
        kwargs = {"coc_map": (4 * torch.rand(CAM.height, CAM.width, generator=g, dtype=torch.float64)).requires_grad_()}
    out = render(splats, backend=backend, **kwargs)
    ref_image, ref_depth, ref_alpha = dense_oracle(splats, **kwargs)
    assert _rel(out.image, ref_image) <= 1e-5
    assert _rel(out.alpha, ref_alpha) <= 1e-5
    mask = ref_alpha > 1e-3
    assert _rel(out.depth[mask], ref_depth[mask]) <= 1e-5
    assert ref_alpha.max() > 0.5  # the scene is not empty
    g = torch.Generator().manual_seed(100 + seed)
    w_img = torch.randn(out.image.shape, generator=g, dtype=torch.float64)
    w_dep = torch.randn(out.depth.shape, generator=g, dtype=torch.float64) * mask
    inputs = [*splats.tensors().values(), *kwargs.values()]
    grads = torch.autograd.grad((out.image * w_img).sum() + (out.depth * w_dep).sum(), inputs)
    ref_grads = torch.autograd.grad((ref_image * w_img).sum() + (ref_depth * w_dep).sum(), inputs)
    for name, got, want in zip([*splats.tensors(), *kwargs], grads, ref_grads):
        assert _rel(got, want) <= 1e-5, name


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_opaque_pixels_stop_at_transmittance_floor(backend):
    """Many opaque splats on one pixel: compositing stops like gsplat's, so alpha stays < 1."""
    n = 12
    means = torch.tensor([[0.0, 0.0, 0.2 + 0.01 * i] for i in range(n)], dtype=torch.float64)
    splats = SceneSplats(means, torch.full((n, 3), math.log(2e-4), dtype=torch.float64),
                         torch.tensor([[1.0, 0, 0, 0]] * n, dtype=torch.float64),
                         torch.full((n,), 10.0, dtype=torch.float64), torch.rand(n, 3, dtype=torch.float64), CAM)
    out = render(splats, backend=backend)
    ref = dense_oracle(splats)
    assert torch.allclose(out.image, ref[0], rtol=1e-9, atol=1e-12)
    centre = out.alpha[CAM.height // 2, CAM.width // 2]
    assert 1 - centre > T_MIN  # stopped before the floor
    assert centre > 0.999


def test_zero_aperture_equals_pinhole():
    splats = random_splats(60, 3)
    pinhole = render(splats)
    zero = render(splats, focus_distance=0.3, aperture=0.0)
    assert torch.equal(pinhole.image, zero.image) and torch.equal(pinhole.alpha, zero.alpha)


def _single(z: float, scale_px: float = 0.5, opacity: float = 0.2, cam: Camera = None) -> SceneSplats:
    cam = cam or Camera(64, 64, 2.9e-3, 1.0, 3.1e-3 / 256)
    s = scale_px * z / cam.fx
    return SceneSplats(
        means=torch.tensor([[0.0, 0.0, z]], dtype=torch.float64),
        log_scales=torch.full((1, 3), math.log(s), dtype=torch.float64),
        quats=torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64),
        opacity_logits=torch.logit(torch.tensor([opacity], dtype=torch.float64)),
        colors=torch.ones(1, 3, dtype=torch.float64),
        camera=cam,
    )


def _moments(alpha: torch.Tensor):
    h, w = alpha.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=alpha.dtype) + 0.5, torch.arange(w, dtype=alpha.dtype) + 0.5, indexing="ij")
    m = alpha.sum()
    mx, my = (alpha * xs).sum() / m, (alpha * ys).sum() / m
    return m, ((alpha * (xs - mx) ** 2).sum() / m)


def test_blur_conserves_energy_and_spreads_with_predicted_sigma():
    z = 0.5
    splat = _single(z, scale_px=1.5, opacity=0.9)  # wide enough that pixel sampling is exact
    sharp_energy, sharp_var = _moments(render(splat, focus_distance=z).alpha)
    pinhole_energy, pinhole_var = _moments(render(splat).alpha)
    # In focus: identical to the pinhole render.
    assert sharp_energy == pytest.approx(float(pinhole_energy), rel=1e-12)
    assert sharp_var == pytest.approx(float(pinhole_var), rel=1e-12)
    for s in (0.1, 0.15, 0.3, 1.5):
        coc = float(CAM.aperture * (s * CAM.focal_length / (s - CAM.focal_length)) / CAM.pixel_size * abs(1 / s - 1 / z))
        p = project(splat, focus_distance=s)
        a, b, c = p.conics[0, 0]
        opacity = float(p.opacities[0, 0])
        integral = 2 * math.pi * opacity / math.sqrt(float(a * c - b * b))
        # The model keeps the energy exactly: opacity · 2π sqrt(det Σ) does not change with blur.
        p0 = project(splat)
        a0, b0, c0 = p0.conics[0, 0]
        assert integral == pytest.approx(2 * math.pi * 0.9 / math.sqrt(float(a0 * c0 - b0 * b0)), rel=1e-12)
        energy, var = _moments(render(splat, focus_distance=s).alpha)
        # The render drops what lies under gsplat's alpha cut-off of 1/255: a share 1/(255 · opacity).
        assert float(energy) == pytest.approx(integral * (1 - ALPHA_THRESHOLD / opacity), rel=0.03), s
        # The model adds exactly c²/16 to the covariance ...
        var_model = float(c / (a * c - b * b))
        assert var_model == pytest.approx(float(c0 / (a0 * c0 - b0 * b0)) + coc**2 / 16, rel=1e-12)
        # ... and the render shows it, less what the cut-off trims from the tails of an isotropic
        # Gaussian cut at q = 1/(255 · opacity): a factor 1 - ln(1/q) q / (1 - q).
        q = ALPHA_THRESHOLD / opacity
        assert float(var) == pytest.approx(var_model * (1 - math.log(1 / q) * q / (1 - q)), rel=0.03), (s, coc)


def test_projection_matches_the_matrix_form_of_ewa():
    """The entry-by-entry covariances against J R S S^T R^T J^T written with matrix products,
    Gaussians inside and outside the field of view (where the Jacobian clamps x/z and y/z)."""
    splats = random_splats(40, 3)
    cam = splats.camera
    rs = quat_to_rotmat(splats.quats) @ torch.diag_embed(torch.exp(splats.log_scales))
    cov3d = rs @ rs.transpose(1, 2)
    mx, my, mz = splats.means.unbind(-1)
    lim_x = (cam.width - cam.cx) / cam.fx + 0.15 * cam.width / cam.fx, cam.cx / cam.fx + 0.15 * cam.width / cam.fx
    lim_y = (cam.height - cam.cy) / cam.fy + 0.15 * cam.height / cam.fy, cam.cy / cam.fy + 0.15 * cam.height / cam.fy
    tx = mz * torch.clamp(mx / mz, -lim_x[1], lim_x[0])
    ty = mz * torch.clamp(my / mz, -lim_y[1], lim_y[0])
    jac = torch.zeros(len(mz), 2, 3, dtype=mz.dtype)
    jac[:, 0, 0], jac[:, 0, 2] = cam.fx / mz, -cam.fx * tx / mz**2
    jac[:, 1, 1], jac[:, 1, 2] = cam.fy / mz, -cam.fy * ty / mz**2
    for s in (None, 0.2):
        cov2d = jac @ cov3d @ jac.transpose(1, 2) + 0.3 * torch.eye(2, dtype=mz.dtype)
        if s is not None:
            coc = thin_lens_coc_px(mz, s, cam.aperture, cam)
            blurred = cov2d + (coc**2 / 16)[:, None, None] * torch.eye(2, dtype=mz.dtype)
            opacity = torch.sigmoid(splats.opacity_logits) * torch.sqrt(torch.det(cov2d) / torch.det(blurred))
            cov2d = blurred
        else:
            opacity = torch.sigmoid(splats.opacity_logits)
        p = project(splats, focus_distance=s)
        a, b, c = p.conics[0].unbind(-1)
        inverse = torch.stack([torch.stack([a, b], -1), torch.stack([b, c], -1)], -2)
        torch.testing.assert_close(torch.linalg.inv(inverse), cov2d, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(p.opacities[0], torch.where(mz >= 0.01, opacity, torch.zeros_like(opacity)),
                                   rtol=1e-10, atol=1e-14)


def test_gradcheck_focus_distance_and_coc_map():
    splats = random_splats(15, 7)
    s = torch.tensor(0.25, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda ss: render(splats, focus_distance=ss).image, (s,), atol=1e-6)
    coc = (3 * torch.rand(CAM.height, CAM.width, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda cm: render(splats, coc_map=cm).image, (coc,), atol=1e-6, fast_mode=True)


def test_bad_inputs():
    splats = random_splats(5, 0)
    with pytest.raises(ValueError, match="coc_map must be 20x24 pixels"):
        render(splats, coc_map=torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="either focus_distance or coc_map"):
        render(splats, focus_distance=0.3, coc_map=torch.zeros(20, 24, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs CUDA"):
        render(splats, backend="gsplat")
    with pytest.raises(ValueError, match="valid choices"):
        render(splats, backend="vulkan")


def test_numba_tiles_match_the_torch_compositor_on_batches_in_float32():
    """Several images at once over many 16-px tiles, float32 as in training: the two CPU backends agree."""
    cam = Camera(width=70, height=45, focal_length=2.9e-3, f_number=1.0, pixel_size=3.1e-3 / 256)
    splats_ref = random_splats(600, 21, cam, dtype=torch.float32)
    results = []
    for backend in ("torch", "numba"):
        splats = splats_ref.to("cpu").requires_grad_()
        focus = torch.tensor([0.12, 0.3, 0.7], requires_grad=True)
        out = render(splats, focus_distance=focus, backend=backend)
        g = torch.Generator().manual_seed(3)
        loss = ((out.image * torch.rand(out.image.shape, generator=g)).sum() + (out.alpha > 0.01).float().mul(out.depth).sum()
                + out.alpha.sum())
        results.append((out, torch.autograd.grad(loss, [*splats.tensors().values(), focus])))
    (a, ga), (b, gb) = results
    assert a.image.shape == (3, 45, 70, 3) and float(a.alpha.max()) > 0.5
    for x, y in ((a.image, b.image), (a.alpha, b.alpha), (a.depth, b.depth)):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-5)
    for x, y in zip(ga, gb):
        assert _rel(y, x) <= 1e-4


def test_numba_render_keeps_the_thread_count_it_was_given():
    """A renderer sized to one CPU renders on one thread: the compositor's threading layer does not
    reset torch's thread count (numba's OpenMP layer shares torch's libgomp and did)."""
    import numba

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        splats = random_splats(200, 5, CAM, dtype=torch.float32)
        render(splats, focus_distance=0.3, backend="numba").image.sum()
        assert numba.threading_layer() == "workqueue"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_batched_render_equals_single_renders():
    splats = random_splats(50, 4)
    distances = [0.12, 0.3, 0.7]
    batch = render(splats, focus_distance=torch.tensor(distances, dtype=torch.float64))
    maps = torch.rand(2, CAM.height, CAM.width, dtype=torch.float64) * 3
    batch_maps = render(splats, coc_map=maps)
    assert batch.image.shape == (3, CAM.height, CAM.width, 3) and batch_maps.alpha.shape == (2, CAM.height, CAM.width)
    for k, s in enumerate(distances):
        single = render(splats, focus_distance=s)
        assert torch.allclose(batch.image[k], single.image, rtol=1e-12, atol=1e-14)
        assert torch.allclose(batch.depth[k], single.depth, rtol=1e-12, atol=1e-14)
    for k in range(2):
        assert torch.allclose(batch_maps.image[k], render(splats, coc_map=maps[k]).image, rtol=1e-12, atol=1e-14)


def test_cropped_camera_renders_the_window():
    splats = random_splats(80, 9)
    full = render(splats, focus_distance=0.3)
    window = render(splats.with_camera(CAM.crop(3, 5, 12, 14)), focus_distance=0.3)
    assert torch.allclose(window.image, full.image[3:15, 5:19], rtol=1e-10, atol=1e-12)
    assert torch.allclose(window.alpha, full.alpha[3:15, 5:19], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="does not fit"):
        CAM.crop(10, 0, 12, 4)
