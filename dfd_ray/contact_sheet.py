"""`dfd-ray show`: a contact sheet PNG of some focal stacks, to check a dataset by eye.

One row per stack: every slice titled with its focus distance in metres, the ground-truth depth
colour-mapped with a colour bar in metres (invalid pixels grey), and the all-in-focus image where
the dataset has one. The resolved config is saved next to the PNG as `<name>.config.yaml`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Optional

import matplotlib
import numpy as np
import pyarrow.parquet as pq
from matplotlib.figure import Figure  # no pyplot: no global figure state, Agg via savefig
from omegaconf import MISSING
from PIL import Image

from dfd_ray import focalstack, storage
from dfd_ray.config import require, require_choice, to_yaml
from dfd_ray.focalstack import DatasetError, FocalStack

SPLIT_CHOICES = ("", "train", "test")
PANEL_INCHES = 2.1  # width of one image panel; 7 panels (5 slices, depth, AIF) fit in ~15 in
DEPTH_CMAP = "viridis"


@dataclass
class ShowConfig:
    """Which stacks a contact sheet shows, and where it goes."""

    uri: str = MISSING  # dataset root (with train/ and test/) or one prefix
    out: str = MISSING  # PNG path or URI
    n_stacks: int = 4  # stacks on the sheet, one row each
    split: str = ""  # "" = `uri` itself if it holds shards, else its first split (train); or train / test
    scenes: list[str] = field(default_factory=list)  # show these scene ids (in this order) instead of picking
    seed: Optional[int] = None  # None = the first `n_stacks` stacks; an integer = a random sample of them
    dpi: int = 100  # resolution of the PNG

    def __post_init__(self) -> None:
        if self.out != MISSING:
            require(self.out.lower().endswith(".png"), "out", f"must name a .png file, got {self.out!r}")
        require(1 <= self.n_stacks <= 32, "n_stacks", f"must be in 1..32, got {self.n_stacks}")
        require(len(self.scenes) <= 32, "scenes", f"at most 32 scenes fit on a sheet, got {len(self.scenes)}")
        require_choice("split", self.split, SPLIT_CHOICES)
        require(40 <= self.dpi <= 300, "dpi", f"must be in 40..300, got {self.dpi}")


def config_uri(out: str) -> str:
    """Where the config of a contact sheet `out` (…/name.png) is saved: …/name.config.yaml."""
    return out[: -len(".png")] + ".config.yaml"


def _prefix(cfg: ShowConfig) -> str:
    if cfg.split:
        prefix = storage.join(cfg.uri, cfg.split)
        focalstack.shard_uris(prefix)  # a clear error where the split does not exist
        return prefix
    return focalstack.dataset_prefixes(cfg.uri)[0]


def pick_stacks(cfg: ShowConfig) -> tuple[str, list[FocalStack]]:
    """(dataset prefix, stacks to show) for a config."""
    prefix = _prefix(cfg)
    if cfg.scenes:
        wanted = set(cfg.scenes)
        found: dict[str, FocalStack] = {}
        for shard in focalstack.shard_uris(prefix):
            for row in focalstack.read_table(shard).to_pylist():
                if row["scene_id"] in wanted and row["scene_id"] not in found:
                    found[row["scene_id"]] = focalstack.row_to_stack(row, where=shard)
            if len(found) == len(wanted):
                break
        missing = [sid for sid in cfg.scenes if sid not in found]
        if missing:
            raise DatasetError(f"{prefix}: no scenes {missing}")
        return prefix, [found[sid] for sid in cfg.scenes]
    if cfg.seed is None:
        stacks = []
        for stack in focalstack.read_stacks(prefix):
            stacks.append(stack)
            if len(stacks) == cfg.n_stacks:
                break
        return prefix, stacks
    # A random sample: count rows from the footers, then decode only the chosen ones.
    shards = focalstack.shard_uris(prefix)
    counts = [_num_rows(shard) for shard in shards]
    total = sum(counts)
    rng = np.random.default_rng(cfg.seed)
    chosen = np.sort(rng.choice(total, size=min(cfg.n_stacks, total), replace=False))
    stacks = []
    offset = 0
    for shard, n in zip(shards, counts):
        local = [int(i - offset) for i in chosen if offset <= i < offset + n]
        if local:
            rows = focalstack.read_table(shard).to_pylist()
            stacks.extend(focalstack.row_to_stack(rows[i], where=shard) for i in local)
        offset += n
    return prefix, stacks


def _num_rows(shard: str) -> int:
    return int(storage.read_with(shard, pq.read_metadata).num_rows)


def _lens_label(stack: FocalStack) -> str:
    return (
        f"{stack.scene_id}\n{stack.height}×{stack.width} px\n"
        f"f {stack.focal_length * 1e3:.3g} mm, f/{stack.f_number:.3g}\n"
        f"pitch {stack.pixel_size * 1e6:.3g} µm"
    )


def _blank(ax, text: str, aspect: float) -> None:
    ax.set_box_aspect(aspect)  # the shape of the images of its row, not of the whole cell
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("0.93")
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", fontsize=9)


def render(stacks: list[FocalStack], title: str = "", dpi: int = 100) -> bytes:
    """The contact sheet of `stacks` as PNG bytes."""
    if not stacks:
        raise DatasetError("no stacks to show")
    n_slices = max(len(s.focus_distances) for s in stacks)
    with_aif = any(s.aif is not None for s in stacks)
    cols = n_slices + 1 + int(with_aif)
    aspects = [s.height / s.width for s in stacks]
    # Extra width for the colour bar and row labels, extra height for the panel titles.
    fig = Figure(
        figsize=(cols * PANEL_INCHES + 1.6, sum(PANEL_INCHES * a + 0.45 for a in aspects) + 0.5),
        dpi=dpi,
        layout="constrained",
    )
    axes = fig.subplots(len(stacks), cols, squeeze=False, gridspec_kw={"height_ratios": aspects})
    cmap = matplotlib.colormaps[DEPTH_CMAP].with_extremes(bad="0.75")
    for r, stack in enumerate(stacks):
        images = stack.images_float()
        for c in range(n_slices):
            ax = axes[r, c]
            if c < len(images):
                ax.imshow(images[c], interpolation="antialiased")
                ax.set_title(f"s = {stack.focus_distances[c]:.3g} m", fontsize=10)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                _blank(ax, "no slice", aspects[r])
        axes[r, 0].set_ylabel(_lens_label(stack), fontsize=8, rotation=0, ha="right", va="center", labelpad=8)
        ax = axes[r, n_slices]
        if stack.depth is not None and np.any(stack.depth > 0):
            valid = stack.depth > 0
            shown = np.ma.masked_where(~valid, stack.depth)
            lo, hi = float(stack.depth[valid].min()), float(stack.depth[valid].max())
            im = ax.imshow(shown, cmap=cmap, vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title("GT depth", fontsize=10)
            bar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
            bar.set_label("depth [m]", fontsize=8)
            bar.ax.tick_params(labelsize=7)
        else:
            _blank(ax, "no depth" if stack.depth is None else "depth all invalid", aspects[r])
        if with_aif:
            ax = axes[r, n_slices + 1]
            if stack.aif is not None:
                ax.imshow(focalstack.to_float(stack.aif))
                ax.set_title("AIF (diagnostic)", fontsize=10)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                _blank(ax, "no AIF", aspects[r])
    if title:
        fig.suptitle(title, fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def run(cfg: ShowConfig) -> dict:
    """Write the contact sheet and its config; returns where, which scenes and the PNG size."""
    prefix, stacks = pick_stacks(cfg)
    png = render(stacks, title=f"{prefix} — {len(stacks)} stacks", dpi=cfg.dpi)
    storage.write_bytes(cfg.out, png)
    cfg_out = config_uri(cfg.out)
    storage.write_bytes(cfg_out, to_yaml(cfg).encode())
    with Image.open(io.BytesIO(png)) as im:
        size = list(im.size)
    return {
        "out": cfg.out,
        "config": cfg_out,
        "dataset": prefix,
        "scenes": [s.scene_id for s in stacks],
        "size_px": size,
    }
