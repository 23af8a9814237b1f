"""Benchmark: where a model's defocus maps go wrong, on held-out stacks with GT depth and AIF.

    python jobs/bench_coc_errors.py --data D [--model URI | --teacher [--splats STORE] | --prior] [--split test] [--stacks N]

Every slice of every stack predicted on its own; per valid GT pixel the CoC error (predicted -
GT CoC through the thin lens, pixels), binned two ways and printed as tables:
- by the all-in-focus image's local contrast (the standard deviation of its luminance in a
  Gaussian window of sigma 2 px): how much blur a pixel can show at all;
- by the GT CoC: in focus (< 0.5 px) to strongly blurred;
- by the distance to the nearest image border (pixels): how much of the nets' receptive field
  falls outside the photo;
- by the distance to the nearest depth edge of the GT (pixels): near an occlusion one pixel's blur
  mixes two surfaces, so no reader can match the CoC of either.
A last line gives the error where blur is both defined and visible (AIF contrast >= 0.01, at
least 8 px from a depth edge).
The AIF is read for this diagnosis only; nothing trains on it. Without `--model`: the shipped model.
A model's CoC error scale b (as eval and inference use it: widened by its `scale_calibration`) is
scored too: mean |error| / b and the share of |error| > 3b (1 and e^-3 = 0.050 for a calibrated
Laplace; below 1 under-, above 1 over-confident, which lens fusion, multiplying the slices'
likelihoods, punishes).
`--teacher` scores the training teacher instead of a model (`teachers.teacher_maps`, what `dfd-ray
train` learns from: the splat fit's depth for scenes in `--splats`, else the classical stack
depth), with a second MAE column weighted by the teacher's confidence and the mean confidence, and a
table binned by that confidence (does the error fall as the confidence rises).
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
BORDER_BINS_PX = (0.0, 4.0, 8.0, 16.0, 24.0, 32.0, np.inf)
EDGE_BINS_PX = (0.0, 2.0, 4.0, 8.0, 16.0, 32.0, np.inf)
EDGE_JUMP_LOG = 0.05  # |Δ ln depth| between 4-neighbours that makes a depth edge (a slanted plane stays far below)
EDGE_CAP_PX = 64  # distance given to pixels with no depth edge that near
CONFIDENCE_BINS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.7, 1.01)  # a teacher's own confidence
READABLE = (0.01, 8.0)  # AIF contrast and distance to a depth edge [px] from which blur counts as readable


def border_distance(height: int, width: int) -> np.ndarray:
    """(H, W) distance of each pixel to the nearest image border, pixels (0 on the outermost row)."""
    y = np.minimum(np.arange(height), np.arange(height)[::-1])[:, None]
    x = np.minimum(np.arange(width), np.arange(width)[::-1])[None, :]
    return np.minimum(y, x).astype(np.float32)


def depth_edge_distance(depth: np.ndarray, jump_log: float = EDGE_JUMP_LOG, cap_px: int = EDGE_CAP_PX) -> np.ndarray:
    """(H, W) depth in metres (0 = none) → the chessboard distance of each pixel to the nearest
    depth edge (both pixels of a 4-neighbour pair of valid depths whose logs differ by more than
    `jump_log`), pixels; `cap_px` where none is nearer."""
    valid = depth > 0
    log_depth = np.log(np.where(valid, depth, 1.0))
    edge = np.zeros(depth.shape, bool)
    for axis in (0, 1):
        lo, hi = [slice(None)] * 2, [slice(None)] * 2
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        lo, hi = tuple(lo), tuple(hi)
        jump = (np.abs(log_depth[hi] - log_depth[lo]) > jump_log) & valid[lo] & valid[hi]
        edge[lo] |= jump
        edge[hi] |= jump
    dist = np.full(depth.shape, float(cap_px), np.float32)
    reach = edge
    for r in range(cap_px):
        dist[reach & (dist == cap_px)] = r
        if reach.all():
            break
        p = np.pad(reach, 1)
        reach = np.zeros_like(reach)
        for dy in range(3):
            for dx in range(3):
                reach |= p[dy:dy + depth.shape[0], dx:dx + depth.shape[1]]
    return dist


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


def coc_errors(predict, prefix: str, max_stacks: int = 0) -> dict[str, np.ndarray | None]:
    """Over every valid GT pixel of every slice of the first `max_stacks` stacks (0: all): the
    signed CoC error [px] ("error"), the AIF contrast, the GT CoC [px], the distances [px] to the
    image border and to the nearest depth edge, the weight, and the error scale [px] or None."""
    columns = {k: [] for k in ("error", "contrast", "gt_coc", "border", "depth_edge", "weight", "scale")}
    for n, stack in enumerate(focalstack.read_stacks(prefix)):
        if max_stacks and n >= max_stacks:
            break
        if stack.depth is None or stack.aif is None:
            raise SystemExit(f"{stack.scene_id}: needs GT depth and an AIF image")
        valid = stack.depth > 0
        contrast = local_contrast(stack.aif)
        border = border_distance(stack.height, stack.width)
        depth_edge = depth_edge_distance(stack.depth)
        cocs, conf, scale = predict(stack)
        for k, s in enumerate(stack.focus_distances):
            gt_coc = stack.lens.coc_px(np.where(valid, stack.depth, 1.0), float(s))
            row = {"error": cocs[k] - gt_coc, "contrast": contrast, "gt_coc": gt_coc, "border": border,
                   "depth_edge": depth_edge, "weight": np.ones_like(gt_coc) if conf is None else conf[k],
                   "scale": None if scale is None else scale[k]}
            for key, value in row.items():
                if value is not None:
                    columns[key].append(value[valid])
    return {k: np.concatenate(v) if v else None for k, v in columns.items()}


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
    cols = coc_errors(predict, focalstack.split_prefix(args.data, args.split), args.stacks)
    error, scale = cols["error"], cols["scale"]
    weight = cols["weight"] if args.teacher else None
    for title, unit, key, bins in (("AIF local contrast", "", "contrast", CONTRAST_BINS),
                                   ("GT CoC", " px", "gt_coc", COC_BINS_PX),
                                   ("distance to the border", " px", "border", BORDER_BINS_PX),
                                   ("distance to a depth edge", " px", "depth_edge", EDGE_BINS_PX)):
        print(table(title, unit, cols[key], bins, error, weight))
        print()
    if args.teacher:  # is the teacher's confidence calibrated: does its error fall as it rises?
        print(table("teacher confidence", "", weight, CONFIDENCE_BINS, error, weight))
        print()
    readable = (cols["contrast"] >= READABLE[0]) & (cols["depth_edge"] >= READABLE[1])
    mae = {name: f"{np.abs(error[m]).mean():.3f} px" if m.any() else "no pixels"
           for name, m in (("readable", readable), ("elsewhere", ~readable))}
    print(f"blur readable (AIF contrast >= {READABLE[0]:g}, >= {READABLE[1]:g} px from a depth edge): "
          f"{readable.mean():.3f} of the pixels, CoC MAE {mae['readable']}; elsewhere {mae['elsewhere']}")
    if scale is not None:
        ratio = np.abs(error) / scale
        print(f"\nerror scale b: mean |error| / b {ratio.mean():.3f}, median {np.median(ratio):.3f}, share of "
              f"|error| > 3b {np.mean(ratio > 3):.3f} (calibrated Laplace: 1, 0.693, 0.050); mean b {scale.mean():.3f} px")


if __name__ == "__main__":
    main()
