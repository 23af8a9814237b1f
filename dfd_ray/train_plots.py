"""The plots a training checkpoint carries: its curves and a sample prediction (matplotlib, Agg)."""

from __future__ import annotations

import os

import numpy as np


def save_plots(history: list[dict], batch: dict, outputs: dict, folder: str) -> None:
    """training_curve.png (every logged term over the steps) and sample_prediction.png (slices of
    the batch's first stack, its predicted CoC and depth, and the GT depth where there is one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in sorted({k for h in history for k in h if k not in ("step", "seconds", "resumed_from") and not k.startswith("time_")}):
        ax.plot(steps, [h.get(key, np.nan) for h in history], label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    ax.set_title("training curves")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "training_curve.png"), dpi=90)
    plt.close(fig)

    s = batch["images"].shape[1]
    rows = min(s, 3)
    fig, axes = plt.subplots(rows, 4, figsize=(10, 2.6 * rows), squeeze=False)
    gt = batch["depth"][0, 0].numpy() if batch["has_depth"][0] else None
    depth = outputs["depth"][0].detach().numpy()
    lo, hi = float(np.nanmin(depth)), float(np.nanmax(depth))
    if gt is not None and (gt > 0).any():
        lo, hi = min(lo, float(gt[gt > 0].min())), max(hi, float(gt.max()))
    for r in range(rows):
        k = r * (s - 1) // max(rows - 1, 1)
        panels = [(batch["images"][0, k].permute(1, 2, 0).numpy(), f"slice s={float(batch['focus_distances'][0, k]):.2f} m", None),
                  (outputs["coc"][0, k].detach().numpy(), "predicted CoC [px]", "magma"),
                  (depth[k], "predicted depth [m]", "viridis"),
                  (gt, "GT depth [m]" if gt is not None else "no GT depth", "viridis")]
        for c, (img, title, cmap) in enumerate(panels):
            ax = axes[r, c]
            ax.axis("off")
            ax.set_title(title, fontsize=8)
            if img is None:
                continue
            kw = {"vmin": lo, "vmax": hi} if "depth" in title else {}
            shown = ax.imshow(np.clip(img, 0, 1) if cmap is None else img, cmap=cmap, **kw)
            if cmap is not None:
                fig.colorbar(shown, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "sample_prediction.png"), dpi=90)
    plt.close(fig)
