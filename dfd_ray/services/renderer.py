"""A renderer for the splats of several scenes: the body of one renderer actor (plain Python).

It keeps at most `scenes_per_actor` scenes in memory (least recently used evicted). A scene comes
from the splat store (`<splat_store>/<scene_id>.npz`, as `dfd-ray fit` writes it); where none is
stored, the scene's focal stack is fitted and the fit persisted, so a restarted actor reloads it
instead of fitting again. Requests are validated before any work: a bad request raises a clear
error to its caller and leaves the renderer serving.

`render_loss_and_grad` is the training step's remote vector-Jacobian product: the L1 render error
(linear light) of one slice re-rendered with a predicted CoC map, and its gradient with respect
to that map. A `window` (top, left, height, width) renders one crop of the sensor; the caller
undoes any flips of its crop before asking.
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np
import torch

from dfd_ray import focalstack
from dfd_ray.config import require
from dfd_ray.splat.fit import FitConfig, fit_scene, save_fit
from dfd_ray.splat.render import render
from dfd_ray.splat.scene import SceneSplats, load_splats, splat_uri

Window = tuple[int, int, int, int]  # top, left, height, width (pixels)


@dataclass
class RendererPoolConfig:
    splat_store: str = ""  # folder/URI of <scene_id>.npz splats (read, and written by fits)
    data: str = ""  # focal-stack dataset to fit scenes that have no stored splats ("" = none)
    num_actors: int = 1  # renderer actors; scenes are routed to them by a stable hash of their id
    scenes_per_actor: int = 8  # scenes kept in memory per actor (LRU)
    num_cpus: float = 0.5  # per actor; fractional so training workers still schedule on 2 cores
    num_gpus: float = 0.0  # per actor; a GPU cluster gives each actor a fraction of a GPU
    max_restarts: int = -1  # actor restarts after a crash (-1: always)
    fit: FitConfig = field(default_factory=FitConfig)

    def __post_init__(self) -> None:
        require(self.num_actors >= 1, "num_actors", "must be >= 1")
        require(self.scenes_per_actor >= 1, "scenes_per_actor", "must be >= 1")
        require(self.num_cpus >= 0 and self.num_gpus >= 0, "num_cpus", "resources must be >= 0")


class RequestError(ValueError):
    """A render request that cannot be served as asked."""


class RendererCore:
    def __init__(self, cfg: RendererPoolConfig) -> None:
        self.cfg = cfg
        self._scene_index: dict[str, str] | None = None
        self.device = "cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            torch.set_num_threads(max(1, math.ceil(cfg.num_cpus)))
        self.scenes: OrderedDict[str, SceneSplats] = OrderedDict()
        self.priors: dict[str, dict[str, np.ndarray]] = {}  # the fit's depth and confidence
        self.counts: Counter[str] = Counter()
        self.latencies_ms: deque[float] = deque(maxlen=4096)

    # --- scenes -------------------------------------------------------------------------------

    def _scene(self, scene_id: str) -> SceneSplats:
        if scene_id in self.scenes:
            self.counts["hits"] += 1
            self.scenes.move_to_end(scene_id)
            return self.scenes[scene_id]
        uri = splat_uri(self.cfg.splat_store, scene_id)
        try:
            splats, extra = load_splats(uri, device=self.device)
            self.counts["loads"] += 1
        except FileNotFoundError:
            if scene_id not in self.scene_index():
                where = self.cfg.data or "(no dataset configured)"
                raise RequestError(f"unknown scene {scene_id!r}: no splats at {uri} and not in dataset {where}") from None
            stack = focalstack.read_stack(self.scene_index()[scene_id], scene_id)
            result = fit_scene(stack, self.cfg.fit)
            save_fit(result, uri)
            extra = {"depth": result.depth, "confidence": result.confidence}
            splats = result.splats.to(self.device)
            self.counts["fits"] += 1
        self.scenes[scene_id] = splats
        self.priors[scene_id] = {k: extra[k] for k in ("depth", "confidence") if k in extra}
        if len(self.scenes) > self.cfg.scenes_per_actor:
            evicted, _ = self.scenes.popitem(last=False)
            self.priors.pop(evicted, None)
            self.counts["evictions"] += 1
        return splats

    def scene_index(self) -> dict[str, str]:
        """scene_id → shard of the dataset, read on the first miss. Built here rather than passed
        in: a restarted actor then needs nothing but its config (ray-project/ray#53727)."""
        if self._scene_index is None:
            self._scene_index = focalstack.scene_index(self.cfg.data) if self.cfg.data else {}
        return self._scene_index

    def _view(self, scene_id: str, window: Window | None) -> SceneSplats:
        splats = self._scene(scene_id)
        if window is None:
            return splats
        try:
            return splats.with_camera(splats.camera.crop(*[int(v) for v in window]))
        except (TypeError, ValueError) as exc:
            raise RequestError(f"scene {scene_id!r}: bad window {window!r}: {exc}") from None

    # --- requests -----------------------------------------------------------------------------

    @staticmethod
    def _check_map(scene_id: str, name: str, value, shape: tuple[int, ...], non_negative: bool) -> torch.Tensor:
        array = np.asarray(value, dtype=np.float32)
        if array.shape != shape:
            raise RequestError(f"scene {scene_id!r}: {name} is {array.shape}, expected {shape}")
        if not np.all(np.isfinite(array)):
            raise RequestError(f"scene {scene_id!r}: {name} holds NaN or infinite values")
        if non_negative and np.any(array < 0):
            raise RequestError(f"scene {scene_id!r}: {name} holds negative CoC values (min {array.min():.4g} px)")
        return torch.from_numpy(array)

    def _prepare(self, request: dict) -> tuple[SceneSplats, torch.Tensor | None, torch.Tensor | None, float | None]:
        scene_id = request.get("scene_id")
        if not isinstance(scene_id, str):
            raise RequestError(f"scene_id must be a string, got {scene_id!r}")
        view = self._view(scene_id, request.get("window"))
        shape = (view.camera.height, view.camera.width)
        coc = request.get("coc_map")
        coc_t = None if coc is None else self._check_map(scene_id, "coc_map", coc, shape, True).to(self.device)
        target = request.get("target_image")
        target_t = None if target is None else self._check_map(scene_id, "target_image", target, (*shape, 3), False).to(self.device)
        focus = request.get("focus_distance")
        if focus is not None and not (math.isfinite(focus) and focus > view.camera.focal_length):
            raise RequestError(f"scene {scene_id!r}: focus_distance {focus} m must exceed the focal length")
        if coc_t is None and focus is None:
            raise RequestError(f"scene {scene_id!r}: give a coc_map or a focus_distance")
        return view, coc_t, target_t, focus

    def _timed(self, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        except RequestError:
            self.counts["errors"] += 1
            raise
        finally:
            self.counts["requests"] += 1
            self.latencies_ms.append((time.perf_counter() - start) * 1e3)

    def render(self, scene_id: str, focus_distance: float | None = None, coc_map=None,
               window: Window | None = None) -> dict[str, np.ndarray]:
        """Render one view: {'image' (H, W, 3) linear, 'depth' (H, W) m, 'alpha' (H, W)}."""
        request = {"scene_id": scene_id, "focus_distance": focus_distance, "coc_map": coc_map, "window": window}
        return self._timed(self._render, request)

    def _render(self, request: dict) -> dict[str, np.ndarray]:
        view, coc, _, focus = self._prepare(request)
        with torch.no_grad():
            out = render(view, coc_map=coc) if coc is not None else render(view, focus_distance=focus)
        return {k: getattr(out, k).cpu().numpy() for k in ("image", "depth", "alpha")}

    def render_loss_and_grad(self, scene_id: str, focus_distance: float | None, coc_map, target_image,
                             window: Window | None = None) -> tuple[float, np.ndarray]:
        """(mean |render - target| over pixels and channels, d loss / d coc_map (H, W))."""
        request = {"scene_id": scene_id, "focus_distance": focus_distance, "coc_map": coc_map,
                   "target_image": target_image, "window": window}
        return self.render_loss_and_grad_batch([request])[0]

    def render_loss_and_grad_batch(self, requests: list[dict]) -> list[tuple[float, np.ndarray]]:
        """Many (scene, slice) requests in one round trip; same-scene, same-window requests share
        one batched render. Any bad request fails the call with its index."""
        return self._timed(self._loss_and_grad_batch, requests)

    @torch.enable_grad()  # also where the caller runs without grad (an autograd Function's forward in-process)
    def _loss_and_grad_batch(self, requests: list[dict]) -> list[tuple[float, np.ndarray]]:
        prepared = []
        for i, request in enumerate(requests):
            try:
                view, coc, target, _ = self._prepare(request)
            except RequestError as exc:
                raise RequestError(f"request {i}: {exc}") from None
            if coc is None or target is None:
                raise RequestError(f"request {i}: render_loss_and_grad needs a coc_map and a target_image")
            prepared.append((request["scene_id"], tuple(request.get("window") or ()), view, coc, target))
        results: list = [None] * len(prepared)
        groups: dict = {}
        for i, (scene_id, window, *_rest) in enumerate(prepared):
            groups.setdefault((scene_id, window), []).append(i)
        for members in groups.values():
            view = prepared[members[0]][2]
            cocs = torch.stack([prepared[i][3] for i in members]).requires_grad_(True)
            targets = torch.stack([prepared[i][4] for i in members])
            out = render(view, coc_map=cocs)
            losses = (out.image - targets).abs().mean(dim=(1, 2, 3))
            # Items are independent: the gradient of their sum is each item's own gradient.
            (grads,) = torch.autograd.grad(losses.sum(), cocs)
            for k, i in enumerate(members):
                results[i] = (float(losses[k].detach()), grads[k].cpu().numpy())
        return results

    def priors_batch(self, requests: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The scene fit's (depth m, confidence) for each request's window; confidence 0 where
        the stored splats carry no fit maps."""
        return self._timed(self._priors_batch, requests)

    def _priors_batch(self, requests: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for request in requests:
            scene_id, window = request["scene_id"], request.get("window")
            view = self._view(scene_id, window)
            top, left = view.camera.origin_y, view.camera.origin_x
            h, w = view.camera.height, view.camera.width
            prior = self.priors.get(scene_id, {})
            if "depth" in prior and "confidence" in prior:
                out.append((prior["depth"][top:top + h, left:left + w].astype(np.float32),
                            prior["confidence"][top:top + h, left:left + w].astype(np.float32)))
            else:
                out.append((np.ones((h, w), np.float32), np.zeros((h, w), np.float32)))
        return out

    def step_batch(self, priors: list[dict], renders: list[dict]) -> tuple[list, list]:
        """A training step's work for this actor in one call: `priors_batch(priors)` and
        `render_loss_and_grad_batch(renders)`; either list may be empty."""
        return self._timed(lambda: (self._priors_batch(priors), self._loss_and_grad_batch(renders)))

    # --- operator view ------------------------------------------------------------------------

    def stats(self) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "scenes": list(self.scenes),
            **{k: self.counts[k] for k in ("requests", "errors", "hits", "loads", "fits", "evictions")},
            "latency_ms": {f"p{q}": round(float(np.percentile(lat, q)), 2) for q in (50, 90, 99)},
            "device": self.device,
        }
