"""Per-scene fit, the classical baseline, splat storage and the `dfd-ray fit` job."""

import json

import numpy as np
import pytest
import torch

from dfd_ray import defocus, fit_job, imaging, optics, storage, synth
from dfd_ray.depth_codec import decode_png_depth
from dfd_ray.config import ConfigError, load_config
from dfd_ray.depth_from_focus import depth_from_focus
from dfd_ray.focalstack import FocalStack, write_stacks
from dfd_ray.splat import load_splats, render, save_splats
from dfd_ray.splat.fit import FitConfig, fit_scene

FOD = optics.get_preset("fod500")


def two_plane_stack(h=40, w=40, d_bg=0.6, d_fg=0.2, seed=0) -> FocalStack:
    """A textured background plane and a textured rectangle in front of it, rendered through the lens."""
    rng = np.random.default_rng(seed)
    bg = defocus.Surface(imaging.srgb_to_linear(synth.texture(rng, h, w, textured_everywhere=True)),
                         np.ones((h, w), np.float32),
                         np.full((h, w), 1 / d_bg, np.float32))
    alpha = np.zeros((h, w), np.float32)
    alpha[h // 4: 3 * h // 4, w // 5: 3 * w // 5] = 1
    fg = defocus.Surface(imaging.srgb_to_linear(synth.texture(rng, h, w, textured_everywhere=True)), alpha, np.full((h, w), 1 / d_fg, np.float32))
    slices = defocus.render_focal_stack([bg, fg], FOD.focus_distances, FOD.lens)
    images = np.clip(np.round(imaging.linear_to_srgb(slices) * 255), 0, 255).astype(np.uint8)
    depth = np.where(alpha >= 0.5, d_fg, d_bg).astype(np.float32)
    return FocalStack("two-plane", images, np.array(FOD.focus_distances, np.float32),
                      FOD.focal_length, FOD.f_number, FOD.pixel_size, depth)


def test_fit_recovers_two_plane_depths():
    stack = two_plane_stack()
    gt = stack.depth
    result = fit_scene(stack, FitConfig())
    assert result.losses[-1] < 0.5 * result.losses[0]
    front = gt < 0.4
    for region, depth in ((front, 0.2), (~front, 0.6)):
        assert np.median(result.depth[region]) == pytest.approx(depth, rel=0.05)
    # Pixelwise, the occlusion edge (where blurred foreground covers background) dominates.
    assert np.mean(np.abs(result.depth - gt) / gt) < 0.085  # all 5 slices per step: 0.080, 2 (default): 0.081
    assert result.aif.shape == (40, 40, 3) and result.confidence.shape == (40, 40)
    assert 0 <= result.confidence.min() and result.confidence.max() <= 1


def test_fit_reports_progress_and_can_draw_a_few_slices_per_step():
    stack = two_plane_stack(24, 24)
    lines = []
    result = fit_scene(stack, FitConfig(steps=5, warmup_steps=0, log_every=2, slices_per_step=2), log=lines.append)
    assert [line.split(" loss ")[0] for line in lines] == [f"fit two-plane: step {k}/5" for k in (2, 4, 5)]
    assert all(np.isfinite(result.losses)) and len(result.losses) == 5
    with pytest.raises(ConfigError, match="slices_per_step"):
        FitConfig(slices_per_step=-1)


def test_depth_from_focus_on_planes_at_the_focus_distances():
    rng = np.random.default_rng(1)
    h = w = 32
    for s in FOD.focus_distances[1:-1]:
        surf = defocus.Surface(imaging.srgb_to_linear(synth.texture(rng, h, w, textured_everywhere=True)), np.ones((h, w), np.float32),
                               np.full((h, w), 1 / s, np.float32))
        slices = defocus.render_focal_stack([surf], FOD.focus_distances, FOD.lens)
        depth, confidence = depth_from_focus(imaging.linear_to_srgb(slices), np.array(FOD.focus_distances))
        assert np.median(depth) == pytest.approx(s, rel=0.07)
        assert np.median(confidence) > 0.3


@pytest.mark.parametrize("where", ["local", "s3"])
def test_save_load_renders_identically(tmp_path, where, request):
    stack = two_plane_stack(16, 16)
    result = fit_scene(stack, FitConfig(steps=3, warmup_steps=1))
    uri = str(tmp_path / "s.npz") if where == "local" else f"{request.getfixturevalue('s3_bucket')}/splats/s.npz"
    save_splats(result.splats, uri, extra={"depth": result.depth})
    loaded, extra = load_splats(uri)
    assert loaded.camera == result.splats.camera
    np.testing.assert_array_equal(extra["depth"], result.depth)
    for s in (None, 0.3):
        a = render(result.splats, focus_distance=s)
        b = render(loaded, focus_distance=s)
        assert torch.equal(a.image, b.image) and torch.equal(a.depth, b.depth)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no splats at"):
        load_splats(str(tmp_path / "missing.npz"))
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="not a dfd-ray splat file"):
        load_splats(str(tmp_path / "bad.npz"))


def test_fit_job_writes_outputs_and_records_a_failed_scene(ray_session, tmp_path, capsys):
    data = tmp_path / "data"
    cfg = load_config(synth.SynthConfig, [f"out={data}", "n_scenes=2", "n_test=0", "height=24", "width=24"])
    stacks = [synth.make_scene(cfg, i, "train") for i in range(2)]
    # A lens that cannot see the fit's depth range: focal length beyond half the nearest focus.
    bad = synth.make_scene(cfg, 2, "train")
    bad.scene_id, bad.focal_length = "bad-lens", 0.08
    write_stacks(stacks + [bad], str(data / "train"))
    out = tmp_path / "fit"
    job = load_config(fit_job.FitJobConfig, [f"data={data}", f"out={out}", "fit.steps=8", "fit.warmup_steps=2"])
    brief = fit_job.run(job)
    assert brief["scenes"] == 2 and brief["failed"] == 1
    printed = capsys.readouterr().out  # the tasks' progress lines reach the driver's terminal
    for stack in stacks:
        assert f"fit {stack.scene_id}: step 8/8 loss" in printed
    assert "fit bad-lens: FAILED" in printed and "[3/3 scenes]" in printed
    metrics = json.loads((out / "fit_metrics.json").read_text())
    assert metrics["failed"][0]["scene_id"] == "bad-lens" and "depth range" in metrics["failed"][0]["error"]
    for name in ("splat", "dff"):
        assert {"abs_rel", "rmse", "delta1"} <= set(metrics["per_image_then_mean"][name])
    for stack in stacks:
        _, extra = load_splats(fit_job.splat_uri(str(out), stack.scene_id))
        png_uri = str(out / "depth" / f"{stack.scene_id}.png")
        png = decode_png_depth(storage.read_bytes(png_uri), png_uri)  # the strict reader
        np.testing.assert_allclose(png, extra["depth"], atol=6e-4)
    assert (out / "config.yaml").exists()

    # The same command again: the finished scene is kept, a torn splat is refitted, the bad one retried.
    torn = out / "splats" / f"{stacks[0].scene_id}.npz"
    torn.write_bytes(torn.read_bytes()[:100])
    again = fit_job.run(job)
    assert again["scenes"] == 2 and again["kept_from_earlier_run"] == 1 and again["failed"] == 1
    load_splats(str(torn))  # whole again
    per_scene = json.loads((out / "fit_metrics.json").read_text())["per_scene"]
    assert sorted(r["scene_id"] for r in per_scene) == sorted(s.scene_id for s in stacks)


def test_a_lone_scene_gets_the_cpus_many_scenes_share_them():
    assert fit_job.cpus_per_scene(0, cluster_cpus=2, node_cpus=2, scenes=1) == 2
    assert fit_job.cpus_per_scene(0, cluster_cpus=16, node_cpus=8, scenes=1) == 8  # one node at most
    assert fit_job.cpus_per_scene(0, cluster_cpus=16, node_cpus=8, scenes=5) == 3
    assert fit_job.cpus_per_scene(0, cluster_cpus=2, node_cpus=2, scenes=40) == 1
    assert fit_job.cpus_per_scene(0.5, cluster_cpus=2, node_cpus=2, scenes=1) == 0.5  # as configured
