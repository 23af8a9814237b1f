"""Benchmark: where a model's defocus maps go wrong, on held-out stacks with GT depth and AIF.

    python jobs/bench_coc_errors.py --data D [--model URI] [--split test]

Every slice of every stack predicted on its own; per valid GT pixel the CoC error (predicted -
GT CoC through the thin lens, pixels), binned two ways and printed as tables:
- by the all-in-focus image's local contrast (the standard deviation of its luminance in a
  Gaussian window of sigma 2 px): how much blur a pixel can show at all;
- by the GT CoC: in focus (< 0.5 px) to strongly blurred.
The AIF is read for this diagnosis only; nothing trains on it. Without `--model`: the shipped model.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from dfd_ray import focalstack
from dfd_ray.filters import local_variance
from dfd_ray.models.store import load_model

CONTRAST_BINS = (0.0, 0.01, 0.03, 0.1, 0.3, np.inf)
COC_BINS_PX = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, np.inf)


def local_contrast(aif: np.ndarray, sigma_px: float = 2.0) -> np.ndarray:
    """(H, W) standard deviation of the luminance (sRGB in [0, 1]) in a Gaussian window."""
    scale = 65535.0 if aif.dtype == np.uint16 else 255.0
    lum = torch.from_numpy(aif.astype(np.float32) / scale)
    lum = (lum.mean(-1) if lum.dim() == 3 else lum)[None, None]
    return local_variance(lum, sigma_px).sqrt()[0, 0].numpy()


def coc_errors(model, prefix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signed CoC error, AIF contrast, GT CoC) over every valid GT pixel of every slice."""
    errors, contrasts, gt_cocs = [], [], []
    for stack in focalstack.read_stacks(prefix):
        if stack.depth is None or stack.aif is None:
            raise SystemExit(f"{stack.scene_id}: needs GT depth and an AIF image")
        valid = stack.depth > 0
        contrast = local_contrast(stack.aif)
        with torch.no_grad():
            out = model(torch.from_numpy(stack.images_float()).permute(0, 3, 1, 2),
                        torch.from_numpy(stack.focus_distances.astype(np.float32)), stack.lens)
        for k, s in enumerate(stack.focus_distances):
            gt_coc = stack.lens.coc_px(np.where(valid, stack.depth, 1.0), float(s))
            errors.append((out["coc"][k].numpy() - gt_coc)[valid])
            contrasts.append(contrast[valid])
            gt_cocs.append(gt_coc[valid])
    return tuple(np.concatenate(x) for x in (errors, contrasts, gt_cocs))


def table(title: str, unit: str, key: np.ndarray, bins: tuple[float, ...], error: np.ndarray) -> str:
    lines = [f"| {title} | share of pixels | CoC MAE [px] | mean error (bias) [px] |", "|---|---|---|---|"]
    for lo, hi in zip(bins[:-1], bins[1:]):
        m = (key >= lo) & (key < hi)
        if m.any():
            lines.append(f"| {lo:g}–{hi:g}{unit} | {m.mean():.3f} | {np.abs(error[m]).mean():.3f} | {error[m].mean():+.3f} |")
    lines.append(f"| all | 1.000 | {np.abs(error).mean():.3f} | {error.mean():+.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset root or split prefix")
    parser.add_argument("--model", default="", help="model URI (default: the shipped model)")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    model, _ = load_model(args.model)
    error, contrast, gt_coc = coc_errors(model.eval(), focalstack.split_prefix(args.data, args.split))
    print(table("AIF local contrast", "", contrast, CONTRAST_BINS, error))
    print()
    print(table("GT CoC", " px", gt_coc, COC_BINS_PX, error))


if __name__ == "__main__":
    main()
