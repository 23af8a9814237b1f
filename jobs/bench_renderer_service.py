"""Benchmark: renderer-service round trips against the same work in-process.

    python jobs/bench_renderer_service.py [--requests 24] [--actors 2] [--sizes 64 128] [--batch 1]

Scenes hold one Gaussian per pixel (the density of a fitted scene). In-process: one
RendererCore in this process, with one actor's CPU share, answers every call in turn. Pool: 2
caller threads send the same calls concurrently to a RendererPool (scenes spread over the
actors) on a local Ray with as many CPUs as the machine has. A call carries `--batch` requests
(`render_loss_and_grad_batch`: one round trip per actor, as a training step's `step_batch`
makes; 1 = one request per call). Overhead = pool latency per call / in-process latency of the
same call; ms/request is a call's latency over its requests; throughput compares both ways of
serving all the requests.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import threading
import time

import numpy as np
import torch

from dfd_ray import optics
from dfd_ray.config import load_config
from dfd_ray.ray_session import ensure_ray
from dfd_ray.services.pool import RendererPool
from dfd_ray.services.renderer import RendererCore, RendererPoolConfig
from dfd_ray.splat import Camera, SceneSplats, save_splats

FOD = optics.get_preset("fod500")


def fitted_like_scene(size: int, seed: int) -> SceneSplats:
    cam = Camera.from_lens(FOD.lens, size, size)
    g = torch.Generator().manual_seed(seed)
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    z = 0.1 + 0.5 * torch.rand(size * size, generator=g)
    means = torch.stack([(u.reshape(-1) - cam.cx) * z / cam.fx, (v.reshape(-1) - cam.cy) * z / cam.fy, z], -1)
    n = size * size
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1
    return SceneSplats(means, torch.log(0.5 * z / cam.fx)[:, None].expand(n, 3).clone(), quats,
                       torch.full((n,), 4.0), torch.rand(n, 3, generator=g), cam)


def requests_for(size: int, count: int, scenes: list[str]) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"scene_id": scenes[i % len(scenes)], "focus_distance": 0.3,
             "coc_map": rng.uniform(0, 4, (size, size)).astype(np.float32),
             "target_image": rng.uniform(0, 1, (size, size, 3)).astype(np.float32), "window": None}
            for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=24, help="per caller")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=1, help="requests per call (a training step sends 20, about 10 per actor)")
    args = parser.parse_args()
    if args.batch < 1 or args.requests % args.batch:
        parser.error(f"--batch must be >= 1 and divide --requests ({args.requests}), got {args.batch}")
    cpus = os.cpu_count() or 2
    ensure_ray(cpus)
    print(f"cpus {cpus}, actors {args.actors} x {cpus / args.actors:g} CPU, 2 callers x {args.requests} requests, "
          f"{args.batch} per call")
    print(f"{'image':>6} {'mode':>10} {'ms/request':>11} {'p90 ms':>8} {'requests/s':>11} {'overhead':>9}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as store:
            # Two scenes per actor, so that both callers keep every actor busy.
            probe = RendererPool.actor_index_of
            scenes = []
            for a in range(args.actors):
                scenes += [n for n in (f"s{k}" for k in range(200)) if probe(n, args.actors) == a][:2]
            for k, sid in enumerate(scenes):
                save_splats(fitted_like_scene(size, k), f"{store}/{sid}.npz")
            cfg = load_config(RendererPoolConfig, [f"splat_store={store}", f"num_actors={args.actors}",
                                                   f"num_cpus={cpus / args.actors}"])
            work = requests_for(size, 2 * args.requests, scenes)
            calls = [work[i:i + args.batch] for i in range(0, len(work), args.batch)]

            # The same work in-process, on the CPU share one actor gets.
            core = RendererCore(load_config(RendererPoolConfig, [f"splat_store={store}", f"num_cpus={cpus / args.actors}"]))
            for r in work[: len(scenes)]:  # warm-up: load every scene
                core.render_loss_and_grad(**r)
            lat = []
            t0 = time.perf_counter()
            for call in calls:
                t = time.perf_counter()
                core.render_loss_and_grad_batch(call)
                lat.append((time.perf_counter() - t) / args.batch)
            local_rate = len(work) / (time.perf_counter() - t0)
            local_ms = statistics.median(lat) * 1e3
            print(f"{size:5d}² {'in-process':>10} {local_ms:11.1f} {np.percentile(lat, 90) * 1e3:8.1f} "
                  f"{local_rate:11.1f} {'1.00x':>9}", flush=True)

            pool = RendererPool(cfg)
            for r in work[: len(scenes)]:
                pool.render_loss_and_grad(**r)
            lat = []
            lock = threading.Lock()

            def caller(part: list[list[dict]]) -> None:
                for call in part:
                    t = time.perf_counter()
                    pool.render_loss_and_grad_batch(call)
                    with lock:
                        lat.append((time.perf_counter() - t) / args.batch)

            threads = [threading.Thread(target=caller, args=(calls[i::2],)) for i in range(2)]
            t0 = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            pool_rate = len(work) / (time.perf_counter() - t0)
            pool_ms = statistics.median(lat) * 1e3
            print(f"{size:5d}² {'pool':>10} {pool_ms:11.1f} {np.percentile(lat, 90) * 1e3:8.1f} "
                  f"{pool_rate:11.1f} {pool_ms / local_ms:8.2f}x", flush=True)
            print(f"       stats: {[{k: s[k] for k in ('requests', 'hits', 'loads', 'latency_ms')} for s in pool.stats()]}")
            pool.shutdown()


if __name__ == "__main__":
    main()
