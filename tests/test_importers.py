"""Importers: FoD500 folders, RGB-D pairs rendered to stacks, manifests of real stacks.

Every test builds its own tiny source in tmp_path and checks the imported dataset exactly.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import OpenEXR
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dfd_ray import cli, optics, storage
from dfd_ray.config import ConfigError, load_config
from dfd_ray.focalstack import DatasetError, read_stacks
from dfd_ray.importers import fod500, nyuv2, stacks

FOD_FOCUS = [0.1, 0.15, 0.3, 0.7, 1.5]
NYU_FOCUS = [1.0, 1.5, 2.5, 4.0, 6.0]


def by_id(uri: str) -> dict:
    return {s.scene_id: s for s in read_stacks(uri)}


# --- FoD500 ---------------------------------------------------------------------------------

def write_exr(path, depth: np.ndarray) -> None:
    half = depth.astype(np.float16)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, {"R": half, "G": half, "B": half}).write(str(path))


def make_fod500(folder, indices=(0, 1, 401), size=32, aif_for=(1,)) -> dict:
    """A FoD500-layout folder; returns {index: (slices (5,H,W,3) uint8, depth float16, aif or None)}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    truth = {}
    for index in indices:
        slices = rng.integers(0, 256, (5, size, size, 3), dtype=np.uint8)
        for k in rng.permutation(5):  # written out of order: only the sorted names give the order
            Image.fromarray(slices[k]).save(folder / f"{index:06d}{k:02d}All.tif")
        depth = rng.uniform(0.1, 3.0, (size, size)).astype(np.float16)
        depth[0, 0], depth[0, 1], depth[0, 2], depth[0, 3] = np.inf, np.nan, -1.0, 0.0
        write_exr(folder / f"{index:06d}Dpt.exr", depth)
        aif = None
        if index in aif_for:
            aif = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(aif).save(folder / f"{index:06d}Aif.tif")
        truth[index] = (slices, depth, aif)
    (folder / "README.txt").write_text("not part of any scene")
    return truth


def fod_config(src, out, *overrides: str) -> fod500.Fod500ImportConfig:
    return load_config(fod500.Fod500ImportConfig, [f"src={src}", f"out={out}", *overrides])


def test_fod500_imports_pixels_depth_and_splits_exactly(tmp_path):
    truth = make_fod500(tmp_path / "fod")
    out = tmp_path / "ds"
    summary = fod500.run(fod_config(tmp_path / "fod", out))
    assert summary["stacks"] == {"train": 2, "test": 1}
    assert (out / "config.yaml").exists()

    train, test = by_id(str(out / "train")), by_id(str(out / "test"))
    assert sorted(train) == ["fod500-000000", "fod500-000001"] and list(test) == ["fod500-000401"]
    preset = optics.get_preset("fod500")
    for index, (slices, depth, aif) in truth.items():
        stack = (train if index < 400 else test)[f"fod500-{index:06d}"]
        assert stack.images.dtype == np.uint8 and np.array_equal(stack.images, slices)  # focus order too
        np.testing.assert_array_equal(stack.focus_distances, np.float32(FOD_FOCUS))
        assert stack.focal_length == pytest.approx(preset.focal_length)
        assert stack.f_number == pytest.approx(preset.f_number)
        assert stack.pixel_size == pytest.approx(preset.pixel_size)
        expected = depth.astype(np.float32)
        expected[0, :3] = 0.0  # inf, nan and negative are invalid
        assert stack.depth.dtype == np.float32 and np.array_equal(stack.depth, expected)
        if aif is None:
            assert stack.aif is None
        else:
            assert np.array_equal(stack.aif, aif)


def test_fod500_split_boundary_and_lens_overrides(tmp_path):
    make_fod500(tmp_path / "fod", aif_for=())
    cfg = fod_config(tmp_path / "fod", tmp_path / "ds", "test_start=1", "focal_length=0.004", "pixel_size=1e-5")
    summary = fod500.run(cfg)
    assert summary["stacks"] == {"train": 1, "test": 2}
    stack = next(read_stacks(str(tmp_path / "ds" / "test")))
    assert stack.focal_length == pytest.approx(0.004) and stack.pixel_size == pytest.approx(1e-5)
    assert stack.f_number == pytest.approx(1.0)  # not overridden: the preset's


def test_fod500_layout_problems_are_all_named_before_writing(tmp_path):
    src = tmp_path / "fod"
    make_fod500(src)
    (src / "00000103All.tif").unlink()
    (src / "000401Dpt.exr").unlink()
    (src / "badnameAll.tif").write_bytes(b"x")
    out = tmp_path / "ds"
    with pytest.raises(DatasetError) as err:
        fod500.run(fod_config(src, out))
    message = str(err.value)
    assert "scene 000001: 4 *All.tif slices, expected 5" in message
    assert "scene 000401: missing *Dpt.exr" in message
    assert "badnameAll.tif: name does not start with a 6-digit scene index" in message
    assert not out.exists()


def test_fod500_slice_count_follows_focus_distances(tmp_path):
    make_fod500(tmp_path / "fod", indices=(0,))
    with pytest.raises(DatasetError, match=r"5 \*All.tif slices, expected 3"):
        fod500.run(fod_config(tmp_path / "fod", tmp_path / "ds", "focus_distances=[0.1,0.3,1.5]"))


def test_fod500_unreadable_files_are_named(tmp_path):
    src = tmp_path / "fod"
    make_fod500(src, indices=(0,))
    (src / "00000002All.tif").write_bytes(b"not a tif")
    with pytest.raises(DatasetError, match="00000002All.tif"):
        fod500.run(fod_config(src, tmp_path / "ds"))
    make_fod500(src, indices=(0,))
    (src / "000000Dpt.exr").write_bytes(b"not an exr")
    with pytest.raises(DatasetError, match="000000Dpt.exr: not a readable EXR"):
        fod500.run(fod_config(src, tmp_path / "ds"))


def test_fod500_config_is_checked_when_built(tmp_path):
    with pytest.raises(ConfigError, match="focus_distances"):
        fod_config(tmp_path, tmp_path, "focus_distances=[0.3,0.1]")
    with pytest.raises(ConfigError, match="focal length"):
        fod_config(tmp_path, tmp_path, "focal_length=0.2")  # beyond the 0.1 m focus distance
    with pytest.raises(ConfigError, match="shard_size"):
        fod_config(tmp_path, tmp_path, "shard_size=0")
    with pytest.raises(DatasetError, match="does not exist"):
        fod500.run(fod_config(tmp_path / "nowhere", tmp_path / "ds"))


def test_fod500_through_the_cli(tmp_path, capsys):
    make_fod500(tmp_path / "fod", indices=(3, 450))
    code = cli.main(["import", "fod500", str(tmp_path / "fod"), "shard_size=1", "--out", str(tmp_path / "ds")])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["stacks"] == {"train": 1, "test": 1} and summary["importer"] == "fod500"


def test_fod500_from_s3(tmp_path, s3_bucket):
    truth = make_fod500(tmp_path / "fod", indices=(7,), aif_for=())
    for name in os.listdir(tmp_path / "fod"):
        storage.write_bytes(f"{s3_bucket}/fod/{name}", (tmp_path / "fod" / name).read_bytes())
    fod500.run(fod_config(f"{s3_bucket}/fod", f"{s3_bucket}/ds"))
    stack = next(read_stacks(f"{s3_bucket}/ds/train"))
    assert stack.scene_id == "fod500-000007" and np.array_equal(stack.images, truth[7][0])


# --- NYUv2 RGB-D ------------------------------------------------------------------------------

def write_png16(path, array: np.ndarray) -> None:
    Image.fromarray(array.astype(np.uint16)).save(path)


def make_rgbd(root, h=24, w=32) -> dict:
    """rgb/ + depth/ with a mm PNG pair, a JPEG + .npy pair and a PNG + .npy pair."""
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    rng = np.random.default_rng(1)
    truth = {}
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mm = rng.integers(800, 6000, (h, w)).astype(np.uint16)
    mm[:3, :3] = 0  # sensor hole
    Image.fromarray(rgb).save(root / "rgb" / "a.png")
    write_png16(root / "depth" / "a.png", mm)
    truth["a"] = (rgb, (mm.astype(np.float64) * 1e-3).astype(np.float32))
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "rgb" / "b.jpg", quality=95)
    metres = rng.uniform(1.0, 5.0, (h, w)).astype(np.float32)
    metres[5, 5] = np.nan
    np.save(root / "depth" / "b.npy", metres)
    expected = metres.copy()
    expected[5, 5] = 0.0
    truth["b"] = (np.asarray(Image.open(root / "rgb" / "b.jpg").convert("RGB")), expected)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "rgb" / "c.png")
    metres = np.full((h, w), 2.5, np.float32)
    np.save(root / "depth" / "c.npy", metres)
    truth["c"] = (rgb, metres)
    return truth


def nyu_config(src, out, *overrides: str) -> nyuv2.Nyuv2ImportConfig:
    return load_config(nyuv2.Nyuv2ImportConfig, [f"src={src}", f"out={out}", *overrides])


def test_nyuv2_pairs_become_stacks_with_exact_depth(tmp_path):
    truth = make_rgbd(tmp_path / "nyu")
    summary = nyuv2.run(nyu_config(tmp_path / "nyu", tmp_path / "ds"))
    # 3 pairs, test_fraction 0.2 -> round(0.6) = 1: the last stem by sorted name is the test pair
    assert summary["stacks"] == {"train": 2, "test": 1}
    train, test = by_id(str(tmp_path / "ds" / "train")), by_id(str(tmp_path / "ds" / "test"))
    assert sorted(train) == ["nyuv2-a", "nyuv2-b"] and list(test) == ["nyuv2-c"]
    preset = optics.get_preset("nyuv2")
    for stem, (rgb, depth) in truth.items():
        stack = {**train, **test}[f"nyuv2-{stem}"]
        assert stack.images.shape == (5, 24, 32, 3) and stack.images.dtype == np.uint8
        np.testing.assert_array_equal(stack.focus_distances, np.float32(NYU_FOCUS))
        assert stack.focal_length == pytest.approx(preset.focal_length)
        assert stack.f_number == pytest.approx(preset.f_number)
        assert stack.pixel_size == pytest.approx(preset.pixel_size)
        np.testing.assert_allclose(stack.depth, depth, rtol=1e-7, atol=0)
        assert np.array_equal(stack.depth == 0, depth == 0)  # holes stay invalid in the stored depth
        assert np.array_equal(stack.aif, rgb)


def checker(h: int, w: int, period: int = 2) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    board = ((yy // period + xx // period) % 2).astype(np.float32)
    return np.repeat((0.15 + 0.7 * board)[..., None], 3, axis=2)


def high_frequency_energy(image: np.ndarray) -> float:
    grey = image.astype(np.float64).mean(-1)
    return float((np.diff(grey, axis=0) ** 2).mean() + (np.diff(grey, axis=1) ** 2).mean())


def test_nyuv2_rendering_is_sharpest_at_each_regions_depth():
    camera = nyu_config("x", "y").camera()
    h, w = 24, 64
    depth = np.where(np.arange(w)[None, :] < w // 2, 1.5, 4.0).astype(np.float32).repeat(h, 0)
    stack = nyuv2.render_stack(checker(h, w), depth, camera)
    near = [high_frequency_energy(s[:, 2 : w // 2 - 12]) for s in stack]  # away from the depth edge
    far = [high_frequency_energy(s[:, w // 2 + 12 : -2]) for s in stack]
    assert int(np.argmax(near)) == NYU_FOCUS.index(1.5)
    assert int(np.argmax(far)) == NYU_FOCUS.index(4.0)
    assert near[1] > 10 * near[0] and far[3] > 10 * far[0]  # blur, not a rounding wobble


def test_nyuv2_in_focus_plane_reproduces_the_image():
    camera = nyu_config("x", "y").camera()
    rgb = np.random.default_rng(2).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    stack = nyuv2.render_stack(rgb / 255.0, np.full((16, 20), 2.5, np.float32), camera)
    in_focus = stack[NYU_FOCUS.index(2.5)].astype(int)
    assert np.abs(in_focus - rgb).max() <= 1  # sRGB -> linear -> sRGB and 8-bit rounding only


def test_fill_invalid_depth_takes_the_farthest_neighbour():
    depth = np.array([[1.0, 0.0, 0.0, 3.0], [1.0, np.nan, 0.0, 3.0]], np.float32)
    filled = nyuv2.fill_invalid_depth(depth)
    # one growth step: each hole takes the farthest valid depth among its 8 neighbours
    np.testing.assert_array_equal(filled, np.float32([[1, 1, 3, 3], [1, 1, 3, 3]]))
    with pytest.raises(DatasetError, match="no valid pixel"):
        nyuv2.fill_invalid_depth(np.zeros((2, 2), np.float32))


def test_nyuv2_split_folders_are_used_as_given(tmp_path):
    make_rgbd(tmp_path / "nyu" / "train")
    make_rgbd(tmp_path / "nyu" / "test")
    (tmp_path / "nyu" / "test" / "rgb" / "b.jpg").unlink()
    (tmp_path / "nyu" / "test" / "depth" / "b.npy").unlink()
    summary = nyuv2.run(nyu_config(tmp_path / "nyu", tmp_path / "ds", "test_fraction=0.9"))
    assert summary["stacks"] == {"train": 3, "test": 2}


def test_nyuv2_unpaired_and_stray_files_are_all_named(tmp_path):
    src = tmp_path / "nyu"
    make_rgbd(src)
    (src / "depth" / "a.png").unlink()  # image without depth
    np.save(src / "depth" / "z.npy", np.ones((24, 32), np.float32))  # depth without image
    (src / "rgb" / "c.jpg").write_bytes(b"")  # second image of stem c
    (src / "rgb" / "notes.txt").write_text("x")
    (src / "rgb" / ".DS_Store").write_bytes(b"")  # hidden: ignored
    with pytest.raises(DatasetError) as err:
        nyuv2.run(nyu_config(src, tmp_path / "ds"))
    message = str(err.value)
    assert "4 RGB-D layout problem(s)" in message
    assert "a.png: no depth for it" in message and "z.npy: no image for it" in message
    assert "rgb for 'c' given twice" in message and "notes.txt: not a rgb file" in message
    assert not (tmp_path / "ds").exists()


def test_nyuv2_bad_depth_files_are_named(tmp_path):
    src = tmp_path / "nyu"
    make_rgbd(src)
    Image.fromarray(np.full((24, 32), 9, np.uint8)).save(src / "depth" / "a.png")  # 8-bit
    with pytest.raises(DatasetError, match=r"a.png: depth PNG must be 16-bit"):
        nyuv2.run(nyu_config(src, tmp_path / "ds"))
    np.save(src / "depth" / "a.npy", np.ones((10, 10), np.float32))
    (src / "depth" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"a.npy: depth is 10x10, image .*a.png is 24x32"):
        nyuv2.run(nyu_config(src, tmp_path / "ds"))


# --- manifests of real stacks ---------------------------------------------------------------

LENS = {"focal_length": 0.035, "f_number": 2.8, "pixel_size": 5e-6}


def make_slices(folder, scene: str, focus: list[float], h=12, w=16, seed=0) -> dict[float, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = {}
    for s in focus:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{scene}_{s}.png")
        images[s] = image
    return images


def write_csv(path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def stacks_config(src, out, *overrides: str) -> stacks.StacksImportConfig:
    return load_config(stacks.StacksImportConfig, [f"src={src}", f"out={out}", *overrides])


def test_stacks_csv_manifest_sorted_exact_and_split(tmp_path):
    root = tmp_path / "real"
    a = make_slices(root / "imgs", "a", [2.0, 0.5, 1.0], seed=1)
    b = make_slices(root / "imgs", "b", [0.8, 3.0], seed=2)
    mm = np.random.default_rng(3).integers(0, 5000, (12, 16)).astype(np.uint16)
    write_png16(root / "a_depth.png", mm)
    rows = []
    for s in [2.0, 0.5, 1.0]:  # not in focus order: the importer sorts
        depth = "a_depth.png" if s == 1.0 else ""  # given on one row of the scene only
        rows.append({"scene_id": "a", "path": f"imgs/a_{s}.png", "focus_distance": s, **LENS, "depth_path": depth})
        rows[-1]["split"] = ""
    for s in [3.0, 0.8]:  # absolute paths
        path = str(root / "imgs" / f"b_{s}.png")
        rows.append({"scene_id": "b", "path": path, "focus_distance": s, **LENS, "depth_path": "", "split": "test"})
    rows[0], rows[3] = rows[3], rows[0]  # scenes interleaved in the file
    write_csv(root / "manifest.csv", rows)

    summary = stacks.run(stacks_config(root / "manifest.csv", tmp_path / "ds"))
    assert summary["stacks"] == {"train": 1, "test": 1}
    stack_a = next(read_stacks(str(tmp_path / "ds" / "train")))
    stack_b = next(read_stacks(str(tmp_path / "ds" / "test")))
    np.testing.assert_array_equal(stack_a.focus_distances, np.float32([0.5, 1.0, 2.0]))
    assert np.array_equal(stack_a.images, np.stack([a[0.5], a[1.0], a[2.0]]))
    np.testing.assert_allclose(stack_a.depth, mm * 1e-3, rtol=1e-7)
    assert stack_a.focal_length == pytest.approx(0.035) and stack_a.pixel_size == pytest.approx(5e-6)
    np.testing.assert_array_equal(stack_b.focus_distances, np.float32([0.8, 3.0]))
    assert np.array_equal(stack_b.images, np.stack([b[0.8], b[3.0]])) and stack_b.depth is None


def test_stacks_jsonl_json_and_parquet_manifests(tmp_path):
    root = tmp_path / "real"
    a = make_slices(root / "sub", "a", [1.5, 0.7], seed=4)
    depth = np.random.default_rng(5).uniform(0.5, 4.0, (12, 16)).astype(np.float32)
    np.save(root / "sub" / "a.npy", depth)
    records = [
        {"scene_id": "a", "path": f"sub/a_{s}.png", "focus_distance": s, **LENS, "depth_path": "sub/a.npy"}
        for s in (1.5, 0.7)
    ]
    (root / "m.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    stacks.run(stacks_config(root / "m.jsonl", tmp_path / "ds1", "default_split=test"))
    stack = next(read_stacks(str(tmp_path / "ds1" / "test")))
    assert np.array_equal(stack.images, np.stack([a[0.7], a[1.5]]))
    assert np.array_equal(stack.depth, depth)

    (root / "m.json").write_text(json.dumps(records))
    summary = stacks.run(stacks_config(root / "m.json", tmp_path / "ds2"))
    assert summary["stacks"] == {"train": 1, "test": 0}

    pq.write_table(pa.Table.from_pylist(records), root / "m.parquet")  # typed columns, not text
    stacks.run(stacks_config(root / "m.parquet", tmp_path / "ds3"))
    stack = next(read_stacks(str(tmp_path / "ds3" / "train")))
    assert np.array_equal(stack.images, np.stack([a[0.7], a[1.5]])) and np.array_equal(stack.depth, depth)


def test_stacks_lens_mismatch_names_line_and_scene(tmp_path):
    root = tmp_path / "real"
    make_slices(root, "a", [0.5, 1.0])
    rows = [{"scene_id": "a", "path": f"a_{s}.png", "focus_distance": s, **LENS} for s in (0.5, 1.0)]
    rows[1]["f_number"] = 4.0
    write_csv(root / "m.csv", rows)
    with pytest.raises(DatasetError, match=r"m.csv line 3: scene 'a': f_number = 4 differs from 2.8 on m.csv line 2"):
        stacks.run(stacks_config(root / "m.csv", tmp_path / "ds"))
    assert not (tmp_path / "ds").exists()


def test_stacks_missing_files_and_bad_rows_are_all_named(tmp_path):
    root = tmp_path / "real"
    make_slices(root, "a", [0.5])
    records = [
        {"scene_id": "a", "path": "a_0.5.png", "focus_distance": 0.5, **LENS},
        {"scene_id": "a", "path": "a_9.png", "focus_distance": 9, **LENS, "depth_path": "nope.npy"},
        {"scene_id": "b", "path": "a_0.5.png", "focus_distance": "far", **LENS},
        {"scene_id": "c", "path": "a_0.5.png", "focus_distance": 0.5, **LENS, "split": "val"},
        {"scene_id": "d", "path": "a_0.5.png", "focus_distance": 0.5, **LENS, "depht_path": "x"},
        {"scene_id": "a", "path": "a_0.5.png", "focus_distance": 0.5, **LENS},
    ]
    (root / "m.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    with pytest.raises(DatasetError) as err:
        stacks.run(stacks_config(root / "m.jsonl", tmp_path / "ds"))
    message = str(err.value)
    assert f"m.jsonl line 2: scene 'a': image {root / 'a_9.png'} does not exist" in message
    assert f"m.jsonl line 2: scene 'a': depth {root / 'nope.npy'} does not exist" in message
    assert "m.jsonl line 3: focus_distance = 'far' is not a number (metres)" in message
    assert "m.jsonl line 4: split 'val' is not one of ['train', 'test']" in message
    assert "m.jsonl line 5: unknown keys ['depht_path']" in message
    assert "m.jsonl line 6: scene 'a': focus_distance 0.5 m also on m.jsonl line 1" in message


def test_stacks_csv_header_and_undecodable_image(tmp_path):
    root = tmp_path / "real"
    make_slices(root, "a", [0.5, 1.0])
    write_csv(root / "h.csv", [{"scene_id": "a", "path": "a_0.5.png", "focus": 0.5, **LENS}])
    header = r"h.csv line 1: header has missing columns \['focus_distance'\] and unknown columns \['focus'\]"
    with pytest.raises(DatasetError, match=header):
        stacks.run(stacks_config(root / "h.csv", tmp_path / "ds"))
    (root / "a_1.0.png").write_bytes(b"garbage")
    rows = [{"scene_id": "a", "path": f"a_{s}.png", "focus_distance": s, **LENS} for s in (0.5, 1.0)]
    write_csv(root / "m.csv", rows)
    with pytest.raises(DatasetError, match=r"m.csv line 3: scene 'a': .*a_1.0.png: undecodable image"):
        stacks.run(stacks_config(root / "m.csv", tmp_path / "ds"))
