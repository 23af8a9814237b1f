"""Training samples: crops and flips identical across a stack, determinism, Ray Data and DataLoader paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfd_ray import focalstack, streaming
from dfd_ray.config import ConfigError, load_config
from dfd_ray.focalstack import DatasetError, FocalStack
from dfd_ray.streaming import StreamConfig, TorchFocalStacks, make_sample, ray_dataset, sample_rng, scene_ids

H, W, S = 20, 24, 3


def position_stack(scene_id: str, height: int = H, width: int = W, slices: int = S, depth: bool = True) -> FocalStack:
    """A stack whose pixels say where they are: R = row, G = column, B = 40 * slice index;
    depth = 1 + (row * width + column) / 1000 m."""
    yy, xx = np.mgrid[0:height, 0:width]
    images = np.zeros((slices, height, width, 3), dtype=np.uint8)
    images[..., 0] = yy
    images[..., 1] = xx
    images[..., 2] = (40 * np.arange(slices))[:, None, None]
    return FocalStack(
        scene_id=scene_id,
        images=images,
        focus_distances=np.linspace(0.1, 1.5, slices).astype(np.float32),
        focal_length=2.9e-3,
        f_number=1.0,
        pixel_size=12.1e-6,
        depth=(1.0 + (yy * width + xx) / 1000.0).astype(np.float32) if depth else None,
    )


def random_stack(scene_id: str, rng: np.random.Generator, height: int = H, width: int = W) -> FocalStack:
    return FocalStack(
        scene_id=scene_id,
        images=rng.integers(0, 256, size=(S, height, width, 3), dtype=np.uint8),
        focus_distances=np.array([0.1, 0.3, 1.5], dtype=np.float32),
        focal_length=2.9e-3,
        f_number=1.0,
        pixel_size=12.1e-6,
        depth=rng.uniform(0.1, 3.0, size=(height, width)).astype(np.float32),
    )


def write_dataset(uri: str, n: int = 6, shard_size: int = 2) -> list[str]:
    ids = [f"scene-{i:03d}" for i in range(n)]
    focalstack.write_stacks((position_stack(sid) for sid in ids), uri, shard_size=shard_size)
    return ids


def expected_grid(sample: dict) -> tuple[np.ndarray, np.ndarray]:
    top, left, h, w = sample["crop_box"]
    ys, xs = top + np.arange(h), left + np.arange(w)
    if sample["flipped"][0]:
        ys = ys[::-1]
    if sample["flipped"][1]:
        xs = xs[::-1]
    return np.meshgrid(ys, xs, indexing="ij")


def check_positions(sample: dict, width: int = W) -> None:
    """Every slice and the depth show the same, correctly cropped and flipped, window."""
    images = np.rint(np.asarray(sample["images"]) * 255).astype(int)  # (S, 3, h, w)
    ey, ex = expected_grid(sample)
    for s in range(images.shape[0]):
        np.testing.assert_array_equal(images[s, 0], ey)
        np.testing.assert_array_equal(images[s, 1], ex)
        assert np.all(images[s, 2] == 40 * s), "slices were reordered or mixed"
    np.testing.assert_allclose(np.asarray(sample["depth"])[0], 1.0 + (ey * width + ex) / 1000.0, rtol=1e-6)


# --- numpy transform ------------------------------------------------------------------------

def test_crop_and_flips_are_identical_for_all_slices_and_depth():
    stack = position_stack("pos")
    flips = set()
    for seed in range(24):
        sample = make_sample(stack, 8, np.random.default_rng(seed))
        assert sample["images"].shape == (S, 3, 8, 8) and sample["images"].dtype == np.float32
        assert sample["depth"].shape == (1, 8, 8) and sample["depth"].dtype == np.float32
        assert sample["images"].flags.c_contiguous and sample["depth"].flags.c_contiguous
        check_positions(sample)
        flips.add(tuple(bool(f) for f in sample["flipped"]))
    assert flips == {(False, False), (False, True), (True, False), (True, True)}


def test_sample_fields_units_and_dtypes():
    stack = position_stack("fields")
    sample = make_sample(stack, (6, 10), np.random.default_rng(0), flip=False)
    assert not sample["flipped"].any()
    assert sample["crop_box"][2:].tolist() == [6, 10]
    assert sample["image_size"].tolist() == [H, W]
    np.testing.assert_allclose(sample["focus_distances"], stack.focus_distances)
    for key, value in [("focal_length", 2.9e-3), ("f_number", 1.0), ("pixel_size", 12.1e-6)]:
        assert sample[key].dtype == np.float32 and sample[key].shape == ()
        np.testing.assert_allclose(sample[key], value, rtol=1e-6)
    assert bool(sample["has_depth"]) is True
    assert scene_ids(sample) == ["fields"]
    check_positions(sample)


def test_full_image_without_depth_and_16_bit():
    stack = position_stack("nodepth", depth=False)
    stack.images = stack.images.astype(np.uint16) * 257  # 8-bit values on the 16-bit scale
    sample = make_sample(stack, 0, np.random.default_rng(1), flip=False)
    assert sample["images"].shape == (S, 3, H, W)
    assert sample["crop_box"].tolist() == [0, 0, H, W]
    assert not bool(sample["has_depth"]) and not sample["depth"].any()
    assert sample["images"].max() <= 1.0
    np.testing.assert_array_equal(np.rint(sample["images"][0, 0] * 255), np.mgrid[0:H, 0:W][0])


def test_same_seed_same_sample_and_epochs_differ():
    stack = position_stack("det")
    a = make_sample(stack, 8, sample_rng(7, 0, "det"))
    b = make_sample(stack, 8, sample_rng(7, 0, "det"))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    boxes = {tuple(make_sample(stack, 8, sample_rng(7, e, "det"))["crop_box"]) for e in range(8)}
    assert len(boxes) > 1, "every epoch drew the same crop"
    # Scenes get their own windows from one seed.
    other = {tuple(make_sample(position_stack(f"s{i}"), 8, sample_rng(7, 0, f"s{i}"))["crop_box"]) for i in range(8)}
    assert len(other) > 1


def test_crop_larger_than_image_names_scene_and_sizes():
    with pytest.raises(DatasetError, match=r"'small'.*20x24 px.*32x32 px crop"):
        make_sample(position_stack("small"), 32, np.random.default_rng(0), where="/data/x")
    with pytest.raises(DatasetError, match="20x24 px, smaller than the 8x30"):
        make_sample(position_stack("small"), (8, 30), np.random.default_rng(0))


def test_batching_mixed_slice_counts_is_a_clear_error():
    rng = np.random.default_rng(0)
    a = make_sample(position_stack("three", slices=3), 8, rng)
    b = make_sample(position_stack("five", slices=5), 8, rng)
    with pytest.raises(DatasetError, match=r"'images'.*'three' \(3, 3, 8, 8\).*'five' \(5, 3, 8, 8\)"):
        streaming.stack_samples([a, b], where="mem")


def test_scene_id_encoding():
    enc = streaming.encode_scene_id("szene-ü/7")
    assert enc.dtype == np.uint8 and enc.shape == (streaming.SCENE_ID_BYTES,)
    assert scene_ids(torch.as_tensor(np.stack([enc, streaming.encode_scene_id("b")]))) == ["szene-ü/7", "b"]
    with pytest.raises(DatasetError, match="at most 128"):
        streaming.encode_scene_id("x" * 129)


def test_stream_config_validation():
    cfg = load_config(StreamConfig, ["crop=32", "seed=null", "shuffle=rows"])
    assert (cfg.crop, cfg.seed, cfg.shuffle) == (32, None, "rows")
    with pytest.raises(ConfigError, match="shuffle.*valid choices"):
        load_config(StreamConfig, ["shuffle=sometimes"])
    with pytest.raises(ConfigError, match="crop"):
        load_config(StreamConfig, ["crop=-1"])
    with pytest.raises(ConfigError, match="map_num_cpus"):
        StreamConfig(map_num_cpus=0)
    with pytest.raises(ConfigError, match="crops_per_pass"):
        load_config(StreamConfig, ["crops_per_pass=0"])


# --- plain PyTorch --------------------------------------------------------------------------

def windows(batches: list[dict]) -> dict[str, tuple]:
    """Scene id -> (crop box, flips) over some batches."""
    return {
        sid: tuple(box.tolist()) + tuple(flip.tolist())
        for b in batches
        for sid, box, flip in zip(scene_ids(b), b["crop_box"], b["flipped"])
    }


def collect(ds: TorchFocalStacks, **loader_kwargs) -> list[dict]:
    loader = torch.utils.data.DataLoader(ds, batch_size=4, **loader_kwargs)
    return list(loader)


def test_torch_dataset_in_a_dataloader(tmp_path):
    uri = str(tmp_path / "ds")
    ids = write_dataset(uri, n=6, shard_size=2)
    ds = TorchFocalStacks(uri, crop=8, seed=3, epoch=0)
    assert ds.num_rows == 6 and len(ds.shards) == 3
    batches = collect(ds)
    first = batches[0]
    assert first["images"].shape == (4, S, 3, 8, 8) and first["images"].dtype == torch.float32
    assert first["depth"].shape == (4, 1, 8, 8) and first["depth"].dtype == torch.float32
    assert first["has_depth"].dtype == torch.bool and first["has_depth"].all()
    assert first["focus_distances"].shape == (4, S)
    assert first["pixel_size"].shape == (4,) and first["pixel_size"].dtype == torch.float32
    seen = [sid for b in batches for sid in scene_ids(b)]
    assert sorted(seen) == ids
    for b in batches:
        for i in range(len(b["images"])):
            check_positions({k: v[i].numpy() for k, v in b.items()})

    # Deterministic per (seed, epoch); another epoch reorders and re-crops.
    again = collect(TorchFocalStacks(uri, crop=8, seed=3, epoch=0))
    for x, y in zip(batches, again):
        for key in x:
            assert torch.equal(x[key], y[key])
    ds.set_epoch(1)
    assert windows(collect(ds)) != windows(batches)


@pytest.mark.parametrize("shard_size", [2, 6])
def test_torch_dataset_splits_work_across_workers(tmp_path, shard_size):
    # 3 shards: 2 workers split whole shards; 1 shard: they split its rows. Each stack once.
    uri = str(tmp_path / "ds")
    ids = write_dataset(uri, n=6, shard_size=shard_size)
    ds = TorchFocalStacks(uri, crop=8, seed=0, shuffle="rows")
    seen = [sid for b in collect(ds, num_workers=2) for sid in scene_ids(b)]
    assert sorted(seen) == ids


def test_torch_dataset_ranks_partition_the_data(tmp_path):
    uri = str(tmp_path / "ds")
    ids = write_dataset(uri, n=5, shard_size=1)
    parts = [
        [sid for b in collect(TorchFocalStacks(uri, crop=8, seed=1, epoch=2, rank=r, world_size=2)) for sid in scene_ids(b)]
        for r in range(2)
    ]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == ids
    with pytest.raises(ConfigError, match="shared seed"):
        TorchFocalStacks(uri, crop=8, seed=None, world_size=2)


def test_torch_dataset_bad_row_names_shard_and_scene(tmp_path):
    uri = str(tmp_path / "bad")
    good = focalstack.stack_to_row(position_stack("good"))
    bad = focalstack.stack_to_row(position_stack("broken"))
    bad["height"] = H + 1  # images no longer match the declared size
    focalstack.write_stacks([good, bad], uri)
    with pytest.raises(DatasetError, match=r"part-00000\.parquet.*'broken'.*expected 21x24"):
        collect(TorchFocalStacks(uri, crop=8, seed=0, shuffle="none"))


def test_torch_dataset_rejects_wrong_schema(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "odd").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "odd" / "part-00000.parquet")
    with pytest.raises(DatasetError, match="missing column 'scene_id'"):
        TorchFocalStacks(str(tmp_path / "odd"), crop=8)


# --- Ray Data -------------------------------------------------------------------------------

def ray_batches(ds, batch_size: int = 4) -> list[dict]:
    return list(ds.iter_torch_batches(batch_size=batch_size))


def check_ray_batches(batches: list[dict], ids: list[str], crop: int = 8) -> None:
    assert sorted(sid for b in batches for sid in scene_ids(b)) == ids
    b = batches[0]
    n = len(b["images"])
    expected = {
        "images": ((n, S, 3, crop, crop), torch.float32),
        "focus_distances": ((n, S), torch.float32),
        "depth": ((n, 1, crop, crop), torch.float32),
        "has_depth": ((n,), torch.bool),
        "focal_length": ((n,), torch.float32),
        "f_number": ((n,), torch.float32),
        "pixel_size": ((n,), torch.float32),
        "crop_box": ((n, 4), torch.int32),
        "flipped": ((n, 2), torch.bool),
        "image_size": ((n, 2), torch.int32),
        "scene_id": ((n, streaming.SCENE_ID_BYTES), torch.uint8),
    }
    assert set(b) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert tuple(b[key].shape) == shape and b[key].dtype == dtype, key
    for batch in batches:
        for i in range(len(batch["images"])):
            check_positions({k: v[i].numpy() for k, v in batch.items()})


@pytest.mark.ray
def test_ray_dataset_local(ray_session, tmp_path):
    uri = str(tmp_path / "ds")
    ids = write_dataset(uri, n=6, shard_size=2)
    ds = ray_dataset(uri, crop=8, seed=5)
    epoch0 = ray_batches(ds)
    check_ray_batches(epoch0, ids)
    # The same seed in a fresh pipeline repeats epoch 0 crop for crop, scene by scene; iterating
    # the same pipeline again (the next epoch) draws new crops.
    assert windows(ray_batches(ray_dataset(uri, crop=8, seed=5))) == windows(epoch0)
    assert windows(ray_batches(ds)) != windows(epoch0)


@pytest.mark.ray
def test_ray_dataset_draws_several_crops_per_stack_in_one_pass(ray_session, tmp_path):
    uri = str(tmp_path / "ds")
    ids = write_dataset(uri, n=4, shard_size=4)
    batches = ray_batches(ray_dataset(uri, crop=8, seed=5, shuffle="none", crops_per_pass=3))
    samples = [{k: v[i].numpy() for k, v in b.items()} for b in batches for i in range(len(b["images"]))]
    for sample in samples:
        check_positions(sample)  # every crop shows exactly its window of its stack
    seen = [scene_ids(s["scene_id"])[0] for s in samples]
    assert sorted(seen) == sorted(ids * 3)
    assert len(set(seen[:4])) == 4  # interleaved: consecutive samples come from different stacks
    boxes = {}
    for sample, sid in zip(samples, seen):
        boxes.setdefault(sid, set()).add(tuple(sample["crop_box"].tolist()) + tuple(sample["flipped"].tolist()))
    assert all(len(v) == 3 for v in boxes.values())  # three distinct draws per stack


@pytest.mark.ray
def test_ray_dataset_from_s3(ray_session, s3_bucket):
    uri = f"{s3_bucket}/stacks/train"
    ids = write_dataset(uri, n=5, shard_size=2)
    ds = StreamConfig(crop=8, seed=0, shuffle="rows").ray_dataset(uri)
    check_ray_batches(ray_batches(ds, batch_size=2), ids)


@pytest.mark.ray
def test_ray_dataset_row_errors_name_dataset_and_scene(ray_session, tmp_path):
    uri = str(tmp_path / "bad")
    bad = focalstack.stack_to_row(position_stack("broken"))
    bad["images"][1] = b"not a png"
    focalstack.write_stacks([focalstack.stack_to_row(position_stack("good")), bad], uri)
    with pytest.raises(DatasetError, match=rf"{uri} \(shard .*part-00000\.parquet\): scene 'broken': images\[1\]"):
        ray_batches(ray_dataset(uri, crop=8, seed=0))

    small = str(tmp_path / "small")
    focalstack.write_stacks([position_stack("tiny", height=6, width=6)], small)
    with pytest.raises(DatasetError, match=r"scene 'tiny' is 6x6 px, smaller than the 8x8 px crop"):
        ray_batches(ray_dataset(small, crop=8))


@pytest.mark.ray
def test_ray_dataset_reads_each_shard_in_a_task_of_its_own_in_a_new_order_each_epoch(ray_session, tmp_path):
    uri = str(tmp_path / "ds")
    ids = write_dataset(uri, n=12, shard_size=3)
    ds = ray_dataset(uri, crop=8, seed=5, map_batch_size=4)
    # A task holds one shard's stacks (three here), never more, however many the dataset has.
    blocks = [scene_ids(b) for b in ds.iter_batches(batch_size=None, batch_format="numpy")]
    assert sorted(s for block in blocks for s in block) == ids
    assert max(len(block) for block in blocks) <= 3
    # Each epoch reads the shards in its own order, from (seed, epoch) alone.
    orders = [streaming.shard_order(16, "files", 5, epoch).tolist() for epoch in (0, 1, 0)]
    assert orders[0] == orders[2] != orders[1] and sorted(orders[1]) == list(range(16))
    assert streaming.shard_order(16, "none", 5, 1).tolist() == list(range(16))


@pytest.mark.ray
def test_ray_dataset_runs_without_the_downstream_capacity_backpressure(ray_session, tmp_path):
    from ray.data._internal.execution import backpressure_policy as bp

    uri = str(tmp_path / "ds")
    write_dataset(uri, n=4, shard_size=2)
    ds = ray_dataset(uri, crop=8, seed=5)
    # The policy that spun the executor beside a training worker is out; the memory bound stays.
    assert ds.context.get_config(bp.ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY) == [
        p for p in bp.ENABLED_BACKPRESSURE_POLICIES if p is not bp.DownstreamCapacityBackpressurePolicy]
    assert bp.ResourceBudgetBackpressurePolicy in ds.context.get_config(bp.ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY)


@pytest.mark.ray
def test_ray_dataset_unreadable_shard_names_it(ray_session, tmp_path):
    uri = str(tmp_path / "ds")
    write_dataset(uri, n=2, shard_size=2)
    shard = focalstack.shard_uris(uri)[0]
    with pytest.raises(DatasetError, match=r"part-00000\.parquet: not a readable Parquet file"):
        ds = ray_dataset(uri, crop=8, seed=0)  # schemas are checked here, from the footers
        with open(shard, "r+b") as f:  # then the file is torn before the pipeline reads it
            f.seek(4)
            f.write(b"\0" * 64)
        ray_batches(ds)
