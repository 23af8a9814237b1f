"""gsplat (CUDA) against the torch compositor: same inputs, values and gradients.

gsplat's own tests hold its CUDA ops against its torch reference the same way, skipping
without CUDA. gsplat compiles its kernels with fast math in float32, so tolerances are float32's.
"""

import pytest
import torch

from dfd_ray.splat import render
from tests.splat_helpers import random_splats

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
gsplat = pytest.importorskip("gsplat") if torch.cuda.is_available() else None

pytestmark = [cuda, pytest.mark.gpu]


@pytest.mark.parametrize("mode", ["pinhole", "focus", "coc_map"])
def test_gsplat_matches_torch_backend(mode):
    splats_cpu = random_splats(400, 11, dtype=torch.float32)
    results = {}
    for backend, device in (("torch", "cuda"), ("gsplat", "cuda")):
        splats = splats_cpu.to(device).requires_grad_()
        kwargs = {}
        if mode == "focus":
            kwargs["focus_distance"] = torch.tensor(0.3, device=device, requires_grad=True)
        elif mode == "coc_map":
            g = torch.Generator().manual_seed(5)
            kwargs["coc_map"] = (3 * torch.rand(splats.camera.height, splats.camera.width, generator=g)).to(device).requires_grad_()
        out = render(splats, backend=backend, **kwargs)
        g = torch.Generator().manual_seed(6)
        w = torch.randn(out.image.shape, generator=g).to(device)
        loss = (out.image * w).sum() + out.alpha.sum()
        inputs = [*splats.tensors().values(), *kwargs.values()]
        grads = torch.autograd.grad(loss, inputs)
        results[backend] = (out, grads)
    (a, ga), (b, gb) = results["torch"], results["gsplat"]
    assert torch.allclose(a.image, b.image, atol=2e-4, rtol=1e-3)
    assert torch.allclose(a.alpha, b.alpha, atol=2e-4, rtol=1e-3)
    for x, y in zip(ga, gb):
        assert float((x - y).norm() / y.norm().clamp_min(1e-12)) < 5e-3


def test_auto_backend_on_cuda_is_gsplat():
    from dfd_ray.splat.render import choose_backend

    assert choose_backend(torch.device("cuda")) == "gsplat"
