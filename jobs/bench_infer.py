"""Benchmark: images/s of the `dfd-ray infer` Ray Data pipeline against a plain single-process
PyTorch loop over the same photos, same model, same batch size, at 1 and 2 CPUs.

    python jobs/bench_infer.py [--photos 64] [--size 256] [--batch 4] [--cpus 1 2] [--model URI] [--profile]

Both sides do the whole job per photo: read the file, decode, camera values, tiled prediction
(`tiling.predict_tiled`), encode the 16-bit depth PNG and the preview, write both. Each
measurement runs in its own process pinned to the first N cores (sched_setaffinity; Ray's
processes inherit it), so "1 CPU" means one core for everything, Ray's own daemons included.
The plain loop uses N torch threads; the Ray pipeline N predictor actors of 1 CPU each. Ray's
figure is the summary's images/s (pipeline wall time incl. actor start, excl. ray.init).
Without --model a randomly initialised model is used (speed does not depend on the weights).
With a CUDA GPU, a third row runs both on the GPU.

`--profile` (Linux) adds, under each row, the CPU seconds of every process each side ran, by
role: the measuring process ("driver": the plain loop, or Ray's driver), Ray's daemons (raylet,
gcs_server, dashboard.py, ...), its agents and workers by their ray::<name> titles, polled from /proc every
0.25 s (a process that ends between two polls loses at most that much), and the share of the
pinned cores they kept busy over the whole run, ray.init included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict

import numpy as np

CAMERA = {"focus_distance": 0.5, "focal_length": 2.9e-3, "f_number": 1.0, "pixel_size": 1.2e-5}


def process_role(cmdline: str) -> str:
    """What a process is, from its command line: a Ray worker or agent by its title (ray::<name>,
    without the method), a Python script by its file name, any other program by its own."""
    words = cmdline.split()
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0].split(".")[0]
    script = next((w for w in words[1:] if w.endswith(".py")), None)
    return (script or words[0]).rsplit("/", 1)[-1]


def process_table() -> dict[int, tuple[int, float, str]]:
    """pid → (parent pid, CPU seconds, command line) of every process /proc lists (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{entry}/cmdline") as f:
                    cmdline = f.read().replace("\0", " ").strip()
            except OSError:  # it ended meanwhile
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
            table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, cmdline)
    return table


class ProcessCpu:
    """CPU seconds of this process and all its descendants, polled from /proc in a thread."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.seen: dict[int, tuple[str, float]] = {}  # pid → (role, CPU seconds at the last poll)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self) -> None:
        table = process_table()
        me = os.getpid()
        for pid, (_, cpu, cmdline) in table.items():
            ancestor = pid
            while ancestor > 1 and ancestor != me:
                ancestor = table.get(ancestor, (0,))[0]
            if ancestor == me:
                role = "driver" if pid == me else process_role(cmdline)
                if role == "ray::IDLE" and pid in self.seen:  # a worker back in the pool keeps the role it had
                    role = self.seen[pid][0]
                self.seen[pid] = (role, cpu)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "ProcessCpu":
        if not os.path.isdir("/proc/self"):
            raise SystemExit("--profile reads /proc: Linux only")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()

    def by_role(self) -> dict[str, list[float]]:
        """role → [CPU seconds, processes], most CPU first."""
        roles: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for role, cpu in self.seen.values():
            roles[role][0] += cpu
            roles[role][1] += 1
        return dict(sorted(roles.items(), key=lambda kv: -kv[1][0]))


def make_photos(folder: str, n: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        os.makedirs(f"{folder}/photos/d{i % 4}", exist_ok=True)
        base = rng.random((size // 8, size // 8, 3))
        image = np.kron(base, np.ones((8, 8, 1))) * 0.7 + rng.random((size, size, 3)) * 0.3
        Image.fromarray((image * 255).astype(np.uint8)).save(f"{folder}/photos/d{i % 4}/p{i:03d}.png")


def plain_loop(folder: str, model_uri: str, batch: int, tile: int, overlap: int, device: str) -> dict:
    """What a user would write without Ray: one process, files in order, batches of photos."""
    import torch

    from dfd_ray import optics, photos, storage
    from dfd_ray.depth_codec import encode_depth_mm, encode_preview
    from dfd_ray.models.store import load_model
    from dfd_ray.tiling import predict_tiled

    t0 = time.perf_counter()
    model, _ = load_model(model_uri, device)
    paths, _ = photos.list_photos(f"{folder}/photos")

    def forward(x, lens):
        return torch.log(model(x, lens[:, 0], optics.Lens(lens[:, 1], lens[:, 2], lens[:, 3]), likelihood=False)["depth"])[:, None]

    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        images, lens = [], []
        for path in chunk:
            image, exif = photos.decode_photo(storage.read_bytes(path))
            camera, _ = photos.resolve_camera(None, exif, CAMERA)
            images.append(image.astype(np.float32) / 65535.0)
            lens.append([camera[k] for k in photos.CAMERA_KEYS])
        with torch.inference_mode():
            maps, _ = predict_tiled(images, np.array(lens, np.float32), forward, tile, overlap, batch, device)
            depths = [np.exp(m[0]) for m in maps]
        for path, depth in zip(chunk, depths):
            key = f"{folder}/plain/" + photos.photo_key(path, f"{folder}/photos")
            storage.write_bytes(key + ".depth.png", encode_depth_mm(depth))
            storage.write_bytes(key + ".preview.png", encode_preview(depth))
    seconds = time.perf_counter() - t0
    return {"images": len(paths), "seconds": seconds, "images_per_s": len(paths) / seconds}


def ray_pipeline(folder: str, model_uri: str, batch: int, tile: int, overlap: int, cpus: int, gpu: bool) -> dict:
    from dfd_ray import infer
    from dfd_ray.config import load_config

    cfg = load_config(infer.InferConfig, [
        f"model={model_uri}", f"input={folder}/photos", f"out={folder}/ray-{cpus}-{int(gpu)}", f"batch_size={batch}",
        f"tile={tile}", f"overlap={overlap}", f"num_actors={1 if gpu else cpus}", "actor_cpus=1",
        f"actor_gpus={1 if gpu else 0}", f"device={'cuda' if gpu else 'cpu'}", "task_cpus=0.25",
        f"ray_cpus={cpus + 1}", *[f"camera.{k}={v}" for k, v in CAMERA.items()],
    ])
    summary = infer.run(cfg)
    return {"images": summary["done"], "seconds": summary["seconds"], "images_per_s": summary["images_per_s"]}


def measure(args: argparse.Namespace, side: str, cpus: int, gpu: bool) -> dict:
    """One measurement in a fresh process pinned to `cpus` cores."""
    cmd = [sys.executable, __file__, "--child", side, "--folder", args.folder, "--model", args.model,
           "--batch", str(args.batch), "--tile", str(args.tile), "--overlap", str(args.overlap), "--cpus", str(cpus)]
    if gpu:
        cmd.append("--gpu")
    if args.profile:
        cmd.append("--profile")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(args: argparse.Namespace) -> None:
    cpus = args.cpus[0]
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cpus]))
    import torch

    torch.set_num_threads(cpus)
    with ProcessCpu() if args.profile else contextlib.nullcontext() as cpu:
        start = time.perf_counter()
        if args.child == "plain":
            result = plain_loop(args.folder, args.model, args.batch, args.tile, args.overlap, "cuda" if args.gpu else "cpu")
        else:
            result = ray_pipeline(args.folder, args.model, args.batch, args.tile, args.overlap, cpus, args.gpu)
        result["wall_s"] = time.perf_counter() - start
    if cpu is not None:
        result["cpu_by_role"] = cpu.by_role()
    print(json.dumps(result))


def print_profile(side: str, result: dict, cpus: int) -> None:
    roles = result["cpu_by_role"]
    total = sum(cpu for cpu, _ in roles.values())
    print(f"      {side}: {total:.1f} CPU s over {result['wall_s']:.1f} s wall on {cpus} core(s), "
          f"{total / (result['wall_s'] * cpus):.0%} busy; {result['seconds']:.1f} s in the job itself")
    for role, (seconds, count) in roles.items():
        print(f"        {seconds:7.2f} s  {int(count):3d} proc  {role}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--size", type=int, default=256, help="pixels (square photos)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="", help="model URI (default: a randomly initialised model)")
    parser.add_argument("--profile", action="store_true", help="CPU seconds per process role under each row")
    parser.add_argument("--child", choices=["plain", "ray"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--gpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    import torch

    with tempfile.TemporaryDirectory() as folder:
        args.folder = folder
        if not args.model:
            from dfd_ray.models.nets import DFDModel, ModelConfig
            from dfd_ray.models.store import save_model

            torch.manual_seed(0)
            args.model = f"{folder}/model"
            save_model(DFDModel(ModelConfig()), args.model)
        make_photos(folder, args.photos, args.size)
        print(f"{args.photos} photos of {args.size}x{args.size}, batch {args.batch}, tile {args.tile}; "
              f"{os.cpu_count()} cores on this machine")
        print(f"{'CPUs':>5} {'device':>6} {'plain img/s':>12} {'ray img/s':>10} {'ray/plain':>10}")
        runs = [(c, False) for c in args.cpus]
        if torch.cuda.is_available():
            runs.append((min(os.cpu_count() or 1, 8), True))
        for cpus, gpu in runs:
            plain = measure(args, "plain", cpus, gpu)
            ray_ = measure(args, "ray", cpus, gpu)
            print(f"{cpus:5d} {'cuda' if gpu else 'cpu':>6} {plain['images_per_s']:12.2f} {ray_['images_per_s']:10.2f} "
                  f"{ray_['images_per_s'] / plain['images_per_s']:9.2f}x", flush=True)
            if args.profile:
                print_profile("plain", plain, cpus)
                print_profile("ray", ray_, cpus)


if __name__ == "__main__":
    main()
