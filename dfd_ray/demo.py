"""`dfd-ray demo`: the data plane end to end on an embedded local Ray with generated data.

generate (synth) → validate → stream random crops through Ray Data → contact sheet PNG.
Later stages (fit, train, evaluate, infer) join this path as they land.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from dfd_ray import contact_sheet, storage, streaming, synth
from dfd_ray.config import load_config, require, save_config
from dfd_ray.focalstack import validate


@dataclass
class DemoConfig:
    out: str = "demo_out"  # folder or URI for everything the demo writes
    n_scenes: int = 12  # training stacks to generate
    n_test: int = 4
    height: int = 128  # pixels; the preset fixes the pitch
    width: int = 128
    preset: str = "fod500"
    crop: int = 64  # training crop, pixels at native resolution
    batch_size: int = 4
    ray_cpus: int = 2  # logical CPUs of the embedded local Ray
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.ray_cpus >= 1, "ray_cpus", "must be >= 1")
        require(0 < self.crop <= min(self.height, self.width), "crop", "must fit inside height x width")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run(cfg: DemoConfig) -> dict:
    import ray

    save_config(cfg, cfg.out)
    data = storage.join(cfg.out, "data")
    t = _step(f"generate {cfg.n_scenes}+{cfg.n_test} synthetic {cfg.preset} focal stacks → {data}")
    gen = synth.run(load_config(synth.SynthConfig, [
        f"out={data}", f"preset={cfg.preset}", f"n_scenes={cfg.n_scenes}", f"n_test={cfg.n_test}",
        f"height={cfg.height}", f"width={cfg.width}", f"seed={cfg.seed}",
    ]))
    print(f"   {gen['stacks']} in {time.perf_counter() - t:.1f} s")

    _step("validate")
    rows, problems = validate(data)
    print(f"   {rows} stacks checked, {len(problems)} problem(s)")
    if problems:
        raise RuntimeError("generated data failed validation:\n" + "\n".join(map(str, problems)))

    t = _step(f"stream {cfg.crop}x{cfg.crop} crops through Ray Data on a local Ray ({cfg.ray_cpus} CPUs)")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=cfg.ray_cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=200 * 1024 * 1024)
    try:
        ds = streaming.ray_dataset(storage.join(data, "train"), crop=cfg.crop, seed=cfg.seed)
        n_batches = n_stacks = 0
        for batch in ds.iter_torch_batches(batch_size=cfg.batch_size):
            n_batches += 1
            n_stacks += batch["images"].shape[0]
            shape = tuple(batch["images"].shape)
        print(f"   {n_stacks} stacks in {n_batches} batches, images {shape} (B, S, C, h, w), "
              f"{time.perf_counter() - t:.1f} s")
    finally:
        if started_here:
            ray.shutdown()

    sheet = storage.join(cfg.out, "contact_sheet.png")
    _step(f"contact sheet → {sheet}")
    contact_sheet.run(load_config(contact_sheet.ShowConfig, [f"uri={storage.join(data, 'test')}", f"out={sheet}"]))
    print(f"   wrote {sheet}")
    return {"data": data, "contact_sheet": sheet, "stacks_streamed": n_stacks}
