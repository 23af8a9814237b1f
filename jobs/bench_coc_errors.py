"""Benchmark: where a model's defocus maps go wrong, on held-out stacks with GT depth and AIF.

    python jobs/bench_coc_errors.py --data D [--model URI | --teacher [--splats STORE] | --prior] [--split test] [--stacks N]

Every slice of every stack predicted on its own; per valid GT pixel the CoC error (predicted -
GT CoC through the thin lens, pixels), binned two ways and printed as tables:
- by the all-in-focus image's local contrast (the standard deviation of its luminance in a
  Gaussian window of sigma 2 px): how much blur a pixel can show at all;
- by the GT CoC: in focus (< 0.5 px) to strongly blurred.
The AIF is read for this diagnosis only; nothing trains on it. Without `--model`: the shipped model.
A model's CoC error scale b is scored too: mean |error| / b and the share of |error| > 3b (1 and
e^-3 = 0.050 for a calibrated Laplace; below 1 under-, above 1 over-confident, which lens fusion,
multiplying the slices' likelihoods, punishes).
`--teacher` scores the training teacher instead of a model (`teachers.teacher_maps`, what `dfd-ray
train` learns from: the splat fit's depth for scenes in `--splats`, else the classical stack
depth), with a second MAE column weighted by the teacher's confidence and the mean confidence.
`--prior` scores the uninformed reading instead: per slice, the median CoC of the training split's
GT depths (`train.gt_depths`) on every pixel, what a model that reads nothing does best in CoC MAE.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from dfd_ray import focalstack
from dfd_ray.teachers import teacher_maps
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


def model_cocs(model):
    """A stack → its CoC maps (S, H, W) px predicted slice by slice, no weights, and their error scales (S, H, W) px."""
    def predict(stack: focalstack.FocalStack) -> tuple[np.ndarray, None, np.ndarray]:
        with torch.no_grad():
            out = model(torch.from_numpy(stack.images_float()).permute(0, 3, 1, 2),
                        torch.from_numpy(stack.focus_distances.astype(np.float32)), stack.lens, likelihood=False)
        return out["coc"].numpy(), None, out["coc_scale"].numpy()
    return predict


def teacher_cocs(splat_store: str):
    """A stack → its teacher's CoC maps (S, H, W) px through the thin lens, its confidence per slice, no scales."""
    def predict(stack: focalstack.FocalStack) -> tuple[np.ndarray, np.ndarray, None]:
        depth, conf, _ = teacher_maps(stack, splat_store)
        cocs = np.stack([stack.lens.coc_px(depth, float(s)) for s in stack.focus_distances])
        return cocs, np.broadcast_to(conf, cocs.shape), None
    return predict


def prior_cocs(train_prefix: str):
    """A stack → per slice the median CoC (px) over the training GT depths, on every pixel; no weights, no scales."""
    from dfd_ray.config import ConfigError
    from dfd_ray.train import gt_depths

    try:
        depths = gt_depths(train_prefix, max_pixels=200_000)
    except ConfigError:
        raise SystemExit(f"--prior: {train_prefix} holds no GT depth to take the prior from") from None

    def predict(stack: focalstack.FocalStack) -> tuple[np.ndarray, None, None]:
        cocs = [np.full((stack.height, stack.width), np.median(stack.lens.coc_px(depths, float(s))), np.float32)
                for s in stack.focus_distances]
        return np.stack(cocs), None, None
    return predict


def coc_errors(predict, prefix: str, max_stacks: int = 0) -> tuple[np.ndarray, ...]:
    """(signed CoC error, AIF contrast, GT CoC, weight, error scale or None) over every valid GT
    pixel of every slice of the first `max_stacks` stacks (0: all)."""
    errors, contrasts, gt_cocs, weights, scales = [], [], [], [], []
    for n, stack in enumerate(focalstack.read_stacks(prefix)):
        if max_stacks and n >= max_stacks:
            break
        if stack.depth is None or stack.aif is None:
            raise SystemExit(f"{stack.scene_id}: needs GT depth and an AIF image")
        valid = stack.depth > 0
        contrast = local_contrast(stack.aif)
        cocs, conf, scale = predict(stack)
        for k, s in enumerate(stack.focus_distances):
            gt_coc = stack.lens.coc_px(np.where(valid, stack.depth, 1.0), float(s))
            errors.append((cocs[k] - gt_coc)[valid])
            contrasts.append(contrast[valid])
            gt_cocs.append(gt_coc[valid])
            weights.append((np.ones_like(gt_coc) if conf is None else conf[k])[valid])
            if scale is not None:
                scales.append(scale[k][valid])
    return (*(np.concatenate(x) for x in (errors, contrasts, gt_cocs, weights)),
            np.concatenate(scales) if scales else None)


def table(title: str, unit: str, key: np.ndarray, bins: tuple[float, ...], error: np.ndarray,
          weight: np.ndarray | None = None) -> str:
    """Markdown table of the error binned by `key`; with `weight`, a weighted-MAE and a mean-weight column too."""
    extra = " weighted MAE [px] | mean weight |" if weight is not None else ""
    lines = [f"| {title} | share of pixels | CoC MAE [px] | mean error (bias) [px] |{extra}",
             "|---|---|---|---|" + ("---|---|" if weight is not None else "")]
    rows = [(f"{lo:g}–{hi:g}{unit}", (key >= lo) & (key < hi)) for lo, hi in zip(bins[:-1], bins[1:])]
    for name, m in rows + [("all", np.ones_like(key, dtype=bool))]:
        if m.any():
            cell = (f" {np.average(np.abs(error[m]), weights=weight[m] + 1e-12):.3f} | {weight[m].mean():.3f} |"
                    if weight is not None else "")
            lines.append(f"| {name} | {m.mean():.3f} | {np.abs(error[m]).mean():.3f} | {error[m].mean():+.3f} |{cell}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset root or split prefix")
    parser.add_argument("--model", default="", help="model URI (default: the shipped model)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--teacher", action="store_true", help="score the stack teacher instead of a model")
    mode.add_argument("--prior", action="store_true", help="score the training GT's median CoC per slice instead")
    parser.add_argument("--splats", default="", help="with --teacher: a splat store whose fits teach")
    parser.add_argument("--split", default="test")
    parser.add_argument("--stacks", type=int, default=0, help="score the first N stacks only (0: all)")
    args = parser.parse_args()
    if args.teacher:
        predict = teacher_cocs(args.splats)
    elif args.prior:
        train = focalstack.find_split(args.data, "train")
        if train is None:  # split_prefix would fall back to another split: scored on itself
            raise SystemExit(f"--prior: {args.data} has no train split to take the prior from")
        predict = prior_cocs(train)
    else:
        predict = model_cocs(load_model(args.model)[0].eval())
    error, contrast, gt_coc, weight, scale = coc_errors(predict, focalstack.split_prefix(args.data, args.split),
                                                        args.stacks)
    weight = weight if args.teacher else None
    print(table("AIF local contrast", "", contrast, CONTRAST_BINS, error, weight))
    print()
    print(table("GT CoC", " px", gt_coc, COC_BINS_PX, error, weight))
    if scale is not None:
        ratio = np.abs(error) / scale
        print(f"\nerror scale b: mean |error| / b {ratio.mean():.3f}, median {np.median(ratio):.3f}, share of "
              f"|error| > 3b {np.mean(ratio > 3):.3f} (calibrated Laplace: 1, 0.693, 0.050); mean b {scale.mean():.3f} px")


if __name__ == "__main__":
    main()
