import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from dfd_ray import cli
from dfd_ray.focalstack import (
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    DatasetError,
    FocalStack,
    encode_png,
    find_split,
    read_stacks,
    read_table,
    split_prefix,
    stack_to_row,
    validate,
    write_stacks,
)


def _stack(i: int, h=12, w=16, s=3, dtype=np.uint8, depth=True) -> FocalStack:
    rng = np.random.default_rng(i)
    hi = 255 if dtype == np.uint8 else 65535
    images = rng.integers(0, hi + 1, size=(s, h, w, 3)).astype(dtype)
    if dtype == np.uint16:
        images = np.repeat(images[..., :1], 3, axis=3)  # 16-bit is stored as grey
    return FocalStack(
        scene_id=f"scene-{i}",
        images=images,
        focus_distances=np.linspace(0.2, 1.0, s).astype(np.float32),
        focal_length=2.9e-3,
        f_number=1.0,
        pixel_size=12e-6,
        depth=rng.uniform(0.1, 3, (h, w)).astype(np.float32) if depth else None,
        aif=images[0] if dtype == np.uint8 else None,
    )


def test_round_trip_exact_and_sharded(tmp_path):
    stacks = [_stack(i) for i in range(5)] + [_stack(9, dtype=np.uint16, depth=False)]
    shards = write_stacks(stacks, str(tmp_path), shard_size=2)
    assert [s.rsplit("/", 1)[1] for s in shards] == [f"part-{i:05d}.parquet" for i in range(3)]
    back = list(read_stacks(str(tmp_path)))
    assert [b.scene_id for b in back] == [s.scene_id for s in stacks]
    for a, b in zip(stacks, back):
        assert b.images.dtype == a.images.dtype and np.array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.focus_distances, b.focus_distances)
        assert (a.depth is None) == (b.depth is None)
        if a.depth is not None:
            assert np.array_equal(a.depth, b.depth)
        assert b.focal_length == pytest.approx(a.focal_length) and b.pixel_size == pytest.approx(12e-6)
    meta = pq.read_schema(shards[0]).metadata
    assert meta[SCHEMA_VERSION_KEY].decode() == SCHEMA_VERSION


def test_rewrite_replaces_old_shards(tmp_path):
    write_stacks([_stack(i) for i in range(6)], str(tmp_path), shard_size=1)
    write_stacks([_stack(7)], str(tmp_path))
    assert [s.scene_id for s in read_stacks(str(tmp_path))] == ["scene-7"]


def test_duplicate_scene_ids_refused(tmp_path):
    with pytest.raises(DatasetError, match="duplicate scene_id 'scene-1'"):
        write_stacks([_stack(1), _stack(1)], str(tmp_path))


def _planted(tmp_path):
    good = stack_to_row(_stack(0))
    truncated = stack_to_row(_stack(1))
    truncated["images"][1] = truncated["images"][1][: len(truncated["images"][1]) // 2]
    short = stack_to_row(_stack(2))
    short["images"] = short["images"][:-1]  # wrong slice count
    negative = stack_to_row(_stack(3))
    negative["focus_distances"][2] = -0.5
    bad_depth = stack_to_row(_stack(4))
    bad_depth["depth"] = bad_depth["depth"][:-8]
    wrong_size = stack_to_row(_stack(5))
    wrong_size["images"][0] = encode_png(np.zeros((5, 5, 3), np.uint8))
    write_stacks([good, truncated, short, negative], str(tmp_path / "train"), shard_size=2)
    write_stacks([bad_depth, wrong_size], str(tmp_path / "test"))


def test_validate_reports_every_planted_problem_with_scene(tmp_path, capsys):
    _planted(tmp_path)
    rows, problems = validate(str(tmp_path))
    assert rows == 6
    by_scene = {}
    for p in problems:
        by_scene.setdefault(p.scene_id, []).append(p.message)
    assert set(by_scene) == {"scene-1", "scene-2", "scene-3", "scene-4", "scene-5"}
    assert any("images[1]: undecodable image" in m for m in by_scene["scene-1"])
    assert any("2 images but 3 focus_distances" in m for m in by_scene["scene-2"])
    assert any("focus_distances[2] must be a positive" in m for m in by_scene["scene-3"])
    assert any("depth has" in m for m in by_scene["scene-4"])
    assert any("images[0] is 5x5, expected 12x16" in m for m in by_scene["scene-5"])
    assert all("part-0000" in p.shard for p in problems)
    assert cli.main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    for sid in ("scene-1", "scene-2", "scene-3", "scene-4", "scene-5"):
        assert f"scene '{sid}'" in out


def test_reading_fails_naming_shard_and_scene(tmp_path):
    _planted(tmp_path)
    with pytest.raises(DatasetError, match=r"train/part-00000\.parquet: scene 'scene-1': images\[1\]"):
        list(read_stacks(str(tmp_path / "train")))


def test_schema_problems(tmp_path):
    write_stacks([_stack(0)], str(tmp_path))
    shard = tmp_path / "part-00000.parquet"
    table = pq.read_table(shard).drop_columns(["pixel_size"]).replace_schema_metadata({})
    pq.write_table(table, shard)
    with pytest.raises(DatasetError, match="no schema version.*missing column 'pixel_size'"):
        read_table(str(shard))
    (tmp_path / "part-00001.parquet").write_bytes(b"not parquet")
    rows, problems = validate(str(tmp_path))
    assert len(problems) == 2 and "not a readable Parquet file" in problems[1].message


def test_dataset_root_hint(tmp_path):
    write_stacks([_stack(0)], str(tmp_path / "train"))
    with pytest.raises(DatasetError, match="holds splits"):
        list(read_stacks(str(tmp_path)))


def test_split_lookup(tmp_path):
    write_stacks([_stack(0)], str(tmp_path / "test"))
    assert find_split(str(tmp_path), "test").rstrip("/").endswith("test")
    assert find_split(str(tmp_path), "train") is None
    # training on a root with one split reads that split
    assert split_prefix(str(tmp_path), "train") == find_split(str(tmp_path), "test")
    write_stacks([_stack(1)], str(tmp_path / "train"))
    assert split_prefix(str(tmp_path), "train").rstrip("/").endswith("train")


def test_png_modes():
    from PIL import Image

    from dfd_ray.focalstack import decode_image

    rgba = Image.new("RGBA", (4, 3), (10, 20, 30, 40))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    assert decode_image(buf.getvalue()).shape == (3, 4, 3)
    with pytest.raises(DatasetError, match="empty image"):
        decode_image(b"")
    with pytest.raises(DatasetError, match="16-bit colour"):
        encode_png(np.arange(27, dtype=np.uint16).reshape(3, 3, 3))
