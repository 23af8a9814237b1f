"""`dfd-ray show`: contact sheet PNG and its saved config."""

from __future__ import annotations

import io

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from dfd_ray import contact_sheet, focalstack, storage
from dfd_ray.config import ConfigError, load_config
from dfd_ray.contact_sheet import ShowConfig
from dfd_ray.focalstack import DatasetError, FocalStack

FOCUS = np.array([0.1, 0.15, 0.3, 0.7, 1.5], dtype=np.float32)


def scene(scene_id: str, seed: int, depth: bool = True, aif: bool = False, h: int = 48, w: int = 64) -> FocalStack:
    """A textured stack: blocks of colour, sharper in later slices (enough to see on a sheet)."""
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 256, size=(h // 8, w // 8, 3)), np.ones((8, 8, 1))).astype(np.float32)
    slices = []
    for i in range(len(FOCUS)):
        k = 4 - i  # box-blur radius
        padded = np.pad(base, ((k, k), (k, k), (0, 0)), mode="edge")
        blurred = np.mean([padded[dy : dy + h, dx : dx + w] for dy in range(2 * k + 1) for dx in range(2 * k + 1)], axis=0)
        slices.append(blurred.astype(np.uint8))
    d = None
    if depth:
        d = np.tile(np.linspace(0.2, 2.5, w, dtype=np.float32), (h, 1))
        d[:6, :6] = 0  # invalid pixels show grey
    return FocalStack(
        scene_id=scene_id,
        images=np.stack(slices),
        focus_distances=FOCUS,
        focal_length=2.9e-3,
        f_number=1.0,
        pixel_size=12.1e-6,
        depth=d,
        aif=base.astype(np.uint8) if aif else None,
    )


@pytest.fixture
def dataset_root(tmp_path):
    root = tmp_path / "data"
    focalstack.write_stacks(
        [scene("train-0", 0, aif=True), scene("train-1", 1, depth=False), scene("train-2", 2), scene("train-3", 3)],
        str(root / "train"),
        shard_size=2,
    )
    focalstack.write_stacks([scene("test-0", 10), scene("test-1", 11)], str(root / "test"))
    return str(root)


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.format == "PNG"
        return im.size


def test_contact_sheet_writes_png_and_config(dataset_root, tmp_path):
    out = str(tmp_path / "sheets" / "sheet.png")
    cfg = load_config(ShowConfig, [f"uri={dataset_root}", f"out={out}", "n_stacks=3"])
    result = contact_sheet.run(cfg)
    assert result["scenes"] == ["train-0", "train-1", "train-2"]  # a root defaults to train/
    assert result["dataset"].endswith("train")
    width, height = png_size(storage.read_bytes(out))
    assert [width, height] == result["size_px"]
    # 5 slices + depth + AIF at ~2 in per panel and 100 dpi: legible, not a poster.
    assert 1000 <= width <= 2200 and 500 <= height <= 1400
    saved = OmegaConf.load(io.BytesIO(storage.read_bytes(result["config"])))
    assert result["config"] == str(tmp_path / "sheets" / "sheet.config.yaml")
    assert saved.uri == dataset_root and saved.n_stacks == 3 and saved.out == out


def test_contact_sheet_split_scenes_and_seed(dataset_root, tmp_path):
    out = str(tmp_path / "t.png")
    assert contact_sheet.run(ShowConfig(uri=dataset_root, out=out, split="test"))["scenes"] == ["test-0", "test-1"]
    picked = contact_sheet.run(ShowConfig(uri=dataset_root, out=out, scenes=["train-3", "train-0"]))
    assert picked["scenes"] == ["train-3", "train-0"]
    a = contact_sheet.run(ShowConfig(uri=f"{dataset_root}/train", out=out, n_stacks=2, seed=4))["scenes"]
    b = contact_sheet.run(ShowConfig(uri=f"{dataset_root}/train", out=out, n_stacks=2, seed=4))["scenes"]
    assert a == b and len(set(a)) == 2 and set(a) <= {"train-0", "train-1", "train-2", "train-3"}


def test_contact_sheet_errors(dataset_root, tmp_path):
    with pytest.raises(ConfigError, match="'uri' is required"):
        load_config(ShowConfig, [f"out={tmp_path}/x.png"])
    with pytest.raises(ConfigError, match="'out'.*png"):
        load_config(ShowConfig, [f"uri={dataset_root}", f"out={tmp_path}/x.jpg"])
    with pytest.raises(ConfigError, match="split"):
        load_config(ShowConfig, [f"uri={dataset_root}", f"out={tmp_path}/x.png", "split=val"])
    with pytest.raises(DatasetError, match=r"no scenes \['nope'\]"):
        contact_sheet.run(ShowConfig(uri=dataset_root, out=f"{tmp_path}/x.png", scenes=["nope"]))
    with pytest.raises(DatasetError, match="no focal-stack dataset"):
        contact_sheet.run(ShowConfig(uri=str(tmp_path / "empty"), out=f"{tmp_path}/x.png"))


def test_contact_sheet_to_s3(s3_bucket, tmp_path):
    uri = f"{s3_bucket}/data/train"
    focalstack.write_stacks([scene("s3-0", 5), scene("s3-1", 6, aif=True)], uri)
    out = f"{s3_bucket}/reports/sheet.png"
    result = contact_sheet.run(ShowConfig(uri=uri, out=out, n_stacks=4))
    assert result["scenes"] == ["s3-0", "s3-1"]
    png_size(storage.read_bytes(out))
    assert storage.exists(f"{s3_bucket}/reports/sheet.config.yaml")
