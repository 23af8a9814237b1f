"""Defocus-map teachers from the stack: targets through the lens, the sidecar, streaming beside the crops."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dfd_ray import depth_from_focus, focalstack, optics, streaming, synth, teachers, train_step
from dfd_ray.config import ConfigError, load_config
from dfd_ray.evaluate import predict_slices
from dfd_ray.models import DFDModel, ModelConfig, load_model, save_model, store
from dfd_ray.optics import coc_gain_px
from dfd_ray.relative_blur import depth_from_relative_blur
from dfd_ray.focalstack import DatasetError
from dfd_ray.splat.scene import Camera, SceneSplats, save_splats, splat_uri

F, N, P = 2.9e-3, 1.0, 3.1e-3 / 256  # fod500: focal length [m], f-number, pitch [m/px]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("teach-data")
    synth.run(load_config(synth.SynthConfig, [f"out={root}", "n_scenes=5", "n_test=1", "height=32", "width=32",
                                              "seed=5", "shard_size=2"]))
    return str(root)


def test_targets_are_the_thin_lens_coc_of_the_teacher_depth():
    depth = torch.tensor([[[[0.5, 0.2], [0.0, 3.0]]]])  # (B=1, 1, 2, 2) metres; 0 = no teacher there
    conf = torch.tensor([[[[1.0, 0.5], [1.0, 0.25]]]])
    focus = torch.tensor([[0.1, 0.3, 1.5]])
    t = train_step.teacher_targets(depth, conf, focus, optics.Lens(F, N, P).gain_px(focus))
    aperture = F / N
    for i, s in enumerate((0.1, 0.3, 1.5)):
        for (r, c), d in {(0, 0): 0.5, (0, 1): 0.2, (1, 1): 3.0}.items():
            by_hand = aperture * F * abs(d - s) / (d * (s - F)) / P  # c(d) / p of docs/design.md §2
            assert float(t["coc"][0, i, r, c]) == pytest.approx(by_hand, rel=1e-5)
            assert float(t["near"][0, i, r, c]) == float(d < s)
    assert t["weight"][0, :, 1, 0].tolist() == [0, 0, 0]  # no teacher depth: no weight
    assert t["weight"][0, 0].tolist() == [[1.0, 0.5], [0.0, 0.25]]
    # The side is taught only where the two roots are apart (CoC >= 0.5 px): d = 0.2 m at s = 0.3 m
    # blurs by 0.67 px, d = 3 m at s = 1.5 m by 0.25 px.
    assert float(t["side_weight"][0, 1, 0, 1]) == 0.5 and float(t["side_weight"][0, 2, 1, 1]) == 0.0


def _flat_splat(stack, depth_m: float, store: str) -> None:
    n = 4
    splats = SceneSplats(means=torch.zeros(n, 3), log_scales=torch.zeros(n, 3), quats=torch.tensor([[1.0, 0, 0, 0]] * n),
                         opacity_logits=torch.zeros(n), colors=torch.zeros(n, 3), camera=Camera.from_stack(stack))
    save_splats(splats, splat_uri(store, stack.scene_id), {
        "depth": np.full((stack.height, stack.width), depth_m, np.float32),
        "confidence": np.full((stack.height, stack.width), 0.75, np.float32)})


def test_stack_teacher_prefers_a_splat_fit_and_falls_back_to_the_stack_depth(data, tmp_path):
    stacks = list(focalstack.read_stacks(f"{data}/train"))
    _flat_splat(stacks[0], 0.42, str(tmp_path))
    fitted = teachers.stack_teacher(stacks[0], str(tmp_path))
    assert fitted["source"] == "splat"
    assert np.frombuffer(fitted["depth"], "<f2").tolist() == pytest.approx([0.42] * 32 * 32, rel=1e-3)
    assert np.frombuffer(fitted["confidence"], "<f2").tolist() == pytest.approx([0.75] * 32 * 32, rel=1e-3)
    unfitted = teachers.stack_teacher(stacks[1], str(tmp_path))
    assert unfitted["source"] == "stack"
    depth, conf = teachers.stack_depth(stacks[1])
    assert np.frombuffer(unfitted["depth"], "<f2").reshape(32, 32) == pytest.approx(depth, rel=1e-3)
    assert np.frombuffer(unfitted["confidence"], "<f2").reshape(32, 32) == pytest.approx(conf, abs=1e-3)


@pytest.mark.ray
def test_sidecars_are_computed_once_per_shard_and_streamed_beside_the_crops(ray_session, data, tmp_path):
    prefix = f"{data}/train"
    shards = focalstack.shard_uris(prefix)
    first = teachers.ensure_teachers(prefix)
    assert first["computed"] == len(shards) == 3 and first["stacks"] == 5
    assert teachers.ensure_teachers(prefix)["computed"] == 0  # up to date: nothing recomputed
    # Shards rewritten with other scenes make their sidecars stale: only those are redone. Stacks
    # 1 and 2 trade shards; the last shard keeps its one stack.
    stacks = list(focalstack.read_stacks(prefix))
    focalstack.write_stacks([stacks[i] for i in (0, 2, 1, 3, 4)], prefix, shard_size=2)
    assert teachers.ensure_teachers(prefix)["computed"] == 2 and all(teachers.sidecar_is_current(s) for s in shards)
    # A sidecar of another teacher version is recomputed, not trained on.
    old = pq.read_table(teachers.sidecar_uri(shards[0]))
    pq.write_table(old.replace_schema_metadata({teachers.VERSION_KEY: b"0"}), teachers.sidecar_uri(shards[0]))
    assert not teachers.sidecar_is_current(shards[0])
    with pytest.raises(DatasetError, match="not a version-1 teacher sidecar"):
        teachers.read_sidecar(teachers.sidecar_uri(shards[0]))
    assert teachers.ensure_teachers(prefix)["computed"] == 1 and teachers.sidecar_is_current(shards[0])

    maps = {}
    for shard in shards:
        maps |= teachers.read_sidecar(teachers.sidecar_uri(shard))
    ds = streaming.ray_dataset(prefix, crop=16, seed=0, teachers=True)
    rows = ds.take_all()
    assert len(rows) == 5
    for row in rows:
        sid = streaming.scene_ids(row["scene_id"])[0]
        top, left, h, w = row["crop_box"]
        expected = maps[sid][0][top:top + h, left:left + w]
        if row["flipped"][0]:
            expected = expected[::-1]
        if row["flipped"][1]:
            expected = expected[:, ::-1]
        assert row["teacher_depth"].shape == (1, 16, 16)
        assert np.array_equal(row["teacher_depth"][0], expected)  # cut and flipped like the slices


@pytest.mark.ray
def test_an_unreadable_shard_fails_alone_and_the_others_are_taught(ray_session, data, tmp_path):
    prefix = str(tmp_path / "train")
    focalstack.write_stacks(list(focalstack.read_stacks(f"{data}/train")), prefix, shard_size=2)
    shards = focalstack.shard_uris(prefix)
    with open(shards[1], "wb") as f:
        f.write(b"not parquet")
    with pytest.raises(DatasetError, match=r"1 of 3 shard\(s\).*part-00001\.parquet.*not a readable Parquet"):
        teachers.ensure_teachers(prefix)
    assert [teachers.sidecar_is_current(s) for s in (shards[0], shards[2])] == [True, True]
    focalstack.write_stacks(list(focalstack.read_stacks(f"{data}/train")), prefix, shard_size=2)  # the fix
    assert teachers.ensure_teachers(prefix)["computed"] == 1  # only the failed shard is redone


def test_a_model_teacher_is_the_lens_fusion_with_the_classical_depth_as_its_prior(data):
    stack = next(iter(focalstack.read_stacks(f"{data}/train")))
    model = load_model("")[0]  # the shipped model
    prior = teachers.stack_depth(stack)
    depth, conf, source = teachers.teacher_maps(stack, model=model)
    assert source == "model" and depth.shape == conf.shape == (32, 32)
    log_lik = torch.from_numpy(predict_slices(model, stack)["log_likelihood"])
    with torch.no_grad():
        fused = model.fuse(log_lik, *(torch.from_numpy(p) for p in prior)).numpy()
    assert np.allclose(depth, fused, rtol=1e-6)
    # Trusted at most as much as the classical depth, less where the slices' posterior is spread.
    assert (conf >= 0).all() and (conf <= prior[1] + 1e-6).all() and conf.mean() < prior[1].mean()
    assert teachers.stack_teacher(stack, model=model)["source"] == "model"


@pytest.mark.ray
def test_a_model_round_replaces_classical_sidecars_and_a_missing_model_fails_first(ray_session, data, tmp_path):
    prefix = f"{data}/train"
    teachers.ensure_teachers(prefix)
    shards = focalstack.shard_uris(prefix)
    digest = store.weights_digest(store.SHIPPED)
    assert all(teachers.sidecar_is_current(s) and not teachers.sidecar_is_current(s, digest) for s in shards)
    shipped = teachers.ensure_teachers(prefix, model_uri=store.SHIPPED)
    assert shipped["computed"] == len(shards) and shipped["from_model"] == 5
    assert teachers.ensure_teachers(prefix, model_uri=store.SHIPPED)["computed"] == 0  # a resumed round keeps its work
    assert teachers.ensure_teachers(prefix)["computed"] == 0  # model sidecars serve plain training too
    # Another model (here: untrained) is another round: every sidecar is taught again.
    save_model(DFDModel(ModelConfig()), str(tmp_path / "other"))
    assert teachers.ensure_teachers(prefix, model_uri=str(tmp_path / "other"))["computed"] == len(shards)
    with pytest.raises(ConfigError, match=f"config key 'model': {tmp_path}/none is not a dfd-ray model"):
        teachers.run(load_config(teachers.TeachConfig, [f"data={data}", f"model={tmp_path}/none"]))


def test_a_torn_or_foreign_sidecar_is_named_in_the_error(tmp_path):
    bad = tmp_path / "teachers" / "part-00000.parquet"
    bad.parent.mkdir()
    bad.write_bytes(b"PAR1 torn")
    with pytest.raises(DatasetError, match="part-00000.parquet: not a readable teacher sidecar"):
        teachers.read_sidecar(str(bad))
    assert not teachers.sidecar_is_current(str(tmp_path / "part-00000.parquet"))



def test_stack_teacher_finds_fronto_parallel_planes_and_trusts_agreement(tmp_path):
    synth.run(load_config(synth.SynthConfig, [f"out={tmp_path}", "n_scenes=4", "n_test=0", "height=48", "width=48",
                                              "seed=2", "max_shapes=0", "slant_probability=0", "noise_std=0"]))
    for stack in focalstack.read_stacks(f"{tmp_path}/train"):
        truth = float(stack.depth[0, 0])
        assert np.allclose(stack.depth, truth)  # one plane
        depth, conf = teachers.stack_depth(stack)
        inner, inner_conf = depth[8:-8, 8:-8], conf[8:-8, 8:-8]
        if truth < 0.7:  # where the fod500 camera's blur tells depths apart (docs/design.md §2)
            assert float(np.median(np.abs(inner - truth))) / truth < 0.05, (truth, float(np.median(inner)))
        # The teacher is the two classical depths' mean in inverse depth, trusted where they agree.
        images = stack.images_float()
        dff, dff_conf = depth_from_focus.depth_from_focus(images, stack.focus_distances)
        rel = depth_from_relative_blur(images, stack.focus_distances, stack.lens)
        assert np.allclose(depth, 2 / (1 / dff + 1 / rel), rtol=1e-5)
        gain = coc_gain_px(float(stack.focus_distances[0]), F, N, P)
        apart = gain * np.abs(1 / dff - 1 / rel) > 1.0
        if apart.any():
            assert conf[apart].max() <= np.exp(-1.0 / teachers.AGREEMENT_PX) * 1.1
        assert 0 <= conf.min() and conf.max() <= 1 and inner_conf.shape == inner.shape
