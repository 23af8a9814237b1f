"""Batch depth inference: photo decoding, camera precedence, tiling, and the Ray Data job on a
real S3 endpoint (moto) and on local files, including an interrupted run that resumes."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dfd_ray import cli, depth_codec, infer, optics, photos, storage, synth
from dfd_ray.config import load_config
from dfd_ray.models.nets import DFDModel, ModelConfig
from dfd_ray.tiling import predict_tiled, tile_boxes, tile_spans

LENS = {"focal_length": 2.9e-3, "f_number": 1.0, "pixel_size": 1.2e-5}


def _read_depth(uri: str) -> np.ndarray:
    return depth_codec.decode_depth(storage.read_bytes(uri), uri)


def _png(array: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _exif_jpeg(image: np.ndarray, focal_mm=50.0, f_number=2.8, distance=1.25, px_per_cm=4000.0, width=None) -> bytes:
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    ifd[0x920A], ifd[0x829D], ifd[0x9206] = focal_mm, f_number, distance
    ifd[0xA20E], ifd[0xA210] = px_per_cm, 3  # focal-plane pixels per centimetre
    if width:
        ifd[0xA002] = width
    return _png(image, fmt="JPEG", exif=exif, quality=95)


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, h + 8, w + 8, generator=g), 9, 1)[0].permute(1, 2, 0).numpy()
    return ((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)


# --- decoding and camera values (no Ray) ----------------------------------------------------

def test_decode_supported_modes_exactly():
    rgb = _texture(12, 10)
    image, _ = photos.decode_photo(_png(rgb))
    assert image.dtype == np.uint16 and np.array_equal(image, rgb.astype(np.uint16) * 257)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    assert np.array_equal(photos.decode_photo(_png(rgba))[0], image)  # alpha dropped
    grey16 = np.arange(120, dtype=np.uint16).reshape(12, 10) * 500
    out = photos.decode_photo(_png(grey16))[0]
    assert out.shape == (12, 10, 3) and np.array_equal(out[..., 1], grey16)
    assert np.array_equal(photos.decode_photo(_png(grey16, fmt="TIFF"))[0][..., 0], grey16)
    grey8 = rgb[..., 0]
    assert np.array_equal(photos.decode_photo(_png(grey8))[0][..., 2], grey8.astype(np.uint16) * 257)


def _cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_texture(8, 8)).convert("CMYK").save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("data, message", [
    (b"", "empty file"),
    (_png(_texture(32, 32))[:300], "truncated or corrupt"),
    (b"just some text, named .jpg", "not a decodable image"),
    (_cmyk_jpeg(), "unsupported pixel mode 'CMYK'"),
    (_png(np.zeros((8, 8), np.float32), fmt="TIFF"), "unsupported pixel mode 'F'"),
], ids=["empty", "truncated", "text", "cmyk", "float"])
def test_decode_errors_name_the_problem(data, message):
    with pytest.raises(photos.PhotoError, match=message):
        photos.decode_photo(data)


def test_a_photo_gone_before_its_read_is_one_read_error_row(tmp_path):
    storage.write_bytes(str(tmp_path / "ok.png"), _png(_texture(8, 8)))
    batch = {"path": np.array([str(tmp_path / "gone.png"), str(tmp_path / "ok.png")])}
    out = infer.decode(batch, str(tmp_path), {}, {"focus_distance": 0.5, "focal_length": 2.9e-3, "f_number": 1.0,
                                                  "pixel_size": 1.2e-5})
    assert list(out["stage"]) == ["read", ""] and "FileNotFoundError" in out["message"][0]
    assert list(out["key"]) == ["gone.png", "ok.png"] and out["height"][1] == 8


def test_exif_camera_from_a_written_jpeg():
    _, camera = photos.decode_photo(_exif_jpeg(_texture(32, 48)))
    assert camera == pytest.approx({"focal_length": 0.05, "f_number": 2.8, "focus_distance": 1.25, "pixel_size": 2.5e-6})
    # Captured 96 px wide, stored at 48: each stored pixel spans two sensor pixels.
    _, camera = photos.decode_photo(_exif_jpeg(_texture(32, 48), width=96))
    assert camera["pixel_size"] == pytest.approx(5e-6)
    assert photos.decode_photo(_png(_texture(8, 8)))[1] == {}


def test_manifest_beats_exif_beats_defaults():
    exif = {"focal_length": 0.05, "f_number": 2.8, "focus_distance": 1.25, "pixel_size": 2.5e-6}
    defaults = {"focus_distance": 2.0, "focal_length": 0.035, "f_number": 4.0, "pixel_size": 4e-6}
    values, source = photos.resolve_camera({"focus_distance": 0.8, "f_number": 1.8}, exif, defaults)
    assert values == {"focus_distance": 0.8, "focal_length": 0.05, "f_number": 1.8, "pixel_size": 2.5e-6}
    assert source == "focus_distance:manifest,focal_length:exif,f_number:manifest,pixel_size:exif"
    assert photos.resolve_camera(None, exif, defaults) == (exif, "exif")
    assert photos.resolve_camera({}, {}, defaults) == (defaults, "default")
    values, source = photos.resolve_camera(None, {"focal_length": 0.05}, defaults)
    assert values["focal_length"] == 0.05 and values["f_number"] == 4.0 and "focal_length:exif" in source
    with pytest.raises(photos.PhotoError, match="no camera focus_distance, pixel_size"):
        photos.resolve_camera(None, {"focal_length": 0.05, "f_number": 2.0}, {})
    with pytest.raises(photos.PhotoError, match="must exceed focal_length"):
        photos.resolve_camera({"focus_distance": 0.01}, exif, {})


def test_manifest_formats_agree_and_bad_rows_are_named(tmp_path):
    rows = [{"path": "a/x.png", "focus_distance": 0.5, "focal_length": 0.0029, "f_number": 1.0, "pixel_size": 1.2e-5,
             "scene_id": "s1"},
            {"path": f"{tmp_path}/in/y.jpg", "focus_distance": 0.7, "focal_length": None, "f_number": None,
             "pixel_size": None, "scene_id": ""}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({k: v for k, v in r.items() if v is not None}) for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    (tmp_path / "m.csv").write_text("path,focus_distance,focal_length,f_number,pixel_size,scene_id\n"
                                    f"a/x.png,0.5,0.0029,1,1.2e-5,s1\n{tmp_path}/in/y.jpg,0.7,,,,\n")
    expected = {"a/x.png": {"scene_id": "s1", "focus_distance": 0.5, "focal_length": 0.0029, "f_number": 1.0,
                            "pixel_size": 1.2e-5},
                "y.jpg": {"scene_id": "", "focus_distance": 0.7}}
    for name in ("m.jsonl", "m.parquet", "m.csv"):
        assert photos.read_camera_manifest(str(tmp_path / name), f"{tmp_path}/in") == expected, name
    (tmp_path / "bad.csv").write_text("path,focus_distance\na.png,0.5\nb.png,-1\n")
    with pytest.raises(ValueError, match=r"bad.csv line 3: focus_distance must be a positive"):
        photos.read_camera_manifest(str(tmp_path / "bad.csv"), str(tmp_path))
    (tmp_path / "cols.csv").write_text("path,focus\na.png,0.5\n")
    with pytest.raises(ValueError, match="unknown column.*focus"):
        photos.read_camera_manifest(str(tmp_path / "cols.csv"), str(tmp_path))


# --- tiling (no Ray) --------------------------------------------------------------------------

@pytest.mark.parametrize("length", [1, 30, 64, 65, 100, 129, 250, 257, 1000])
def test_tile_spans_cover_overlap_and_align(length):
    spans = tile_spans(length, 64, 16)
    assert spans[0][0] == 0 and sum(1 for _ in spans) >= 1
    assert spans[-1][0] + spans[-1][1] == length
    for (a, n), (b, _) in zip(spans, spans[1:]):
        assert b % 8 == 0 and a + n - b >= 16  # aligned starts, enough overlap
    assert all(n <= 64 + 7 for _, n in spans)


def test_tiled_prediction_matches_whole_image_away_from_seams():
    torch.manual_seed(0)
    # A small model keeps the receptive field (input bands, both U-Nets) inside 40 px of a pixel, and
    # the context window (2 sigma) adds 8 px.
    model = DFDModel(ModelConfig(widths=(8, 16), side_widths=(8, 16), context_sigma_px=4.0)).eval()
    with torch.no_grad():  # the side head starts at zero; give the side net's context a say
        model.depthnet.side.head.weight.normal_()

    def forward(x, lens):  # log depth and the CoC, blended across tiles alike
        out = model(x, lens[:, 0], optics.Lens(lens[:, 1], lens[:, 2], lens[:, 3]))
        return torch.stack([torch.log(out["depth"]), out["coc"]], 1)

    image = _texture(320, 336, seed=3).astype(np.float32) / 255
    lens = np.array([[0.5, 2.9e-3, 1.0, 1.2e-5]], np.float32)
    (whole_maps,), (n_whole,) = predict_tiled([image], lens, forward, tile=512, overlap=0, batch_size=4)
    (tiled_maps,), (n_tiled,) = predict_tiled([image], lens, forward, tile=160, overlap=32, batch_size=4)
    whole, tiled = np.exp(whole_maps[0]), np.exp(tiled_maps[0])
    assert n_whole == 1 and n_tiled >= 4
    h, w = image.shape[:2]
    distance = np.full((h, w), 10**6)
    rows, cols = np.mgrid[:h, :w]
    for top, left, th, tw in tile_boxes(h, w, 160, 32):
        for edge in (e for e in (top, top + th) if 0 < e < h):
            distance = np.minimum(distance, np.abs(rows - edge))
        for edge in (e for e in (left, left + tw) if 0 < e < w):
            distance = np.minimum(distance, np.abs(cols - edge))
    rel = np.abs(tiled - whole) / whole
    far = distance >= 48  # beyond the networks' receptive field and the context window from any tile edge
    assert far.mean() > 0.05
    assert rel[far].max() < 1e-4, rel[far].max()
    assert np.abs(tiled_maps[1] - whole_maps[1])[far].max() < 1e-4  # the CoC map too
    assert np.median(rel) < 1e-3 and rel.max() < 0.1  # and seams are blended, not stepped


# --- the Ray Data job ---------------------------------------------------------------------

def _cfg(model_uri, input_uri, out, *overrides):
    return load_config(infer.InferConfig, [f"model={model_uri}", f"input={input_uri}", f"out={out}", "ray_cpus=4",
                                           *overrides])


def _table(out, which):
    if which == "manifest":
        return infer.read_table(out, infer.MANIFEST_DIR, infer.MANIFEST_SCHEMA).to_pylist()
    return infer.read_table(out, infer.ERRORS_DIR, infer.ERRORS_SCHEMA).to_pylist()


def test_s3_prefix_with_good_and_bad_photos(ray_session, s3_bucket, model_uri):
    src = f"{s3_bucket}/photos"
    good = {
        "a/rgb.png": _png(_texture(64, 80, 1)),
        "a/b/grey16.png": _png((_texture(64, 80, 2)[..., 0].astype(np.uint16) * 257)),
        "rgba.png": _png(np.dstack([_texture(40, 40, 3), np.full((40, 40), 200, np.uint8)])),
        "exif.jpg": _exif_jpeg(_texture(48, 64, 4), focal_mm=2.9, f_number=1.0, distance=0.7, px_per_cm=800.0),
        "big.tif": _png(_texture(150, 170, 5), fmt="TIFF"),
    }
    bad = {
        "trunc.png": (_png(_texture(32, 32, 6))[:150], "decode", "truncated"),
        "zero.png": (b"", "decode", "empty file"),
        "text.jpg": (b"this is not a JPEG", "decode", "not a decodable image"),
        "cmyk.jpg": (_cmyk_jpeg(), "decode", "unsupported pixel mode 'CMYK'"),
        "nocam.png": (_png(_texture(16, 16, 7)), "camera", "no camera focus_distance"),
    }
    for key, data in {**good, **{k: v[0] for k, v in bad.items()}}.items():
        storage.write_bytes(f"{src}/{key}", data)
    storage.write_bytes(f"{src}/README.txt", b"not a photo: ignored")
    storage.write_bytes(f"{s3_bucket}/cams.csv", (
        "path,focus_distance,focal_length,f_number,pixel_size,scene_id\n"
        "a/rgb.png,0.3,0.0029,1,1.2e-5,s1\n"
        f"{src}/a/b/grey16.png,0.7,,,,s1\n"
        "rgba.png,1.5,0.0029,1,1.2e-5,\n"
        "exif.jpg,0.15,,,,\n"
        "big.tif,0.5,,,,\n").encode())
    out = f"{s3_bucket}/depth"
    cfg = _cfg(model_uri, src, out, f"manifest={s3_bucket}/cams.csv", "camera.focal_length=0.0029",
               "camera.f_number=1.0", "camera.pixel_size=1.2e-5", "tile=96", "overlap=16", "batch_size=2")
    summary = infer.run(cfg)
    assert (summary["done"], summary["errors"], summary["skipped"], summary["ignored_files"]) == (5, 5, 0, 1)

    manifest = {r["input"]: r for r in _table(out, "manifest")}
    errors = {r["input"]: r for r in _table(out, "errors")}
    assert set(manifest) == {f"{src}/{k}" for k in good} and set(errors) == {f"{src}/{k}" for k in bad}
    for key, (_, stage, message) in bad.items():
        assert errors[f"{src}/{key}"]["stage"] == stage and message in errors[f"{src}/{key}"]["message"], key
    sources = {k: manifest[f"{src}/{k}"]["camera_source"] for k in good}
    assert sources["a/rgb.png"] == "manifest" and sources["rgba.png"] == "manifest"
    assert sources["a/b/grey16.png"] == "focus_distance:manifest,focal_length:default,f_number:default,pixel_size:default"
    # manifest (focus) beats EXIF (the rest) beats defaults (unused)
    assert sources["exif.jpg"] == "focus_distance:manifest,focal_length:exif,f_number:exif,pixel_size:exif"
    assert manifest[f"{src}/exif.jpg"]["focus_distance"] == 0.15
    assert manifest[f"{src}/exif.jpg"]["pixel_size"] == pytest.approx(1e-2 / 800)
    assert manifest[f"{src}/big.tif"]["tiles"] > 1 and manifest[f"{src}/a/rgb.png"]["tiles"] == 1
    for key, data in good.items():
        row = manifest[f"{src}/{key}"]
        assert row["depth"] == f"{out}/{key}.depth.png" and row["preview"] == f"{out}/{key}.preview.png"
        assert row["model_id"] == summary["model_id"] and row["run_id"] == summary["run_id"]
        h, w = Image.open(io.BytesIO(data)).size[::-1]
        depth_mm = np.asarray(Image.open(io.BytesIO(storage.read_bytes(row["depth"]))))
        assert depth_mm.shape == (h, w) == (row["height"], row["width"])
        assert 0.1 - 1e-3 <= row["depth_min"] <= row["depth_median"] <= row["depth_max"] <= 3.0 + 1e-3
        assert abs(np.median(depth_mm) / 1000 - row["depth_median"]) < 1e-3
        assert Image.open(io.BytesIO(storage.read_bytes(row["preview"]))).size == (w, h)
    # two photos share scene s1: fused
    assert summary["scenes_fused"] == 1 and storage.exists(f"{out}/_scenes/s1.depth.png")

    again = infer.run(cfg)  # nothing new: everything written is skipped, failures are retried
    assert (again["done"], again["skipped"], again["errors"]) == (0, 5, 5)
    assert len(_table(out, "manifest")) == 5 and len(_table(out, "errors")) == 5


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGKILL, marks=pytest.mark.slow), signal.SIGINT],
                         ids=["SIGKILL", "SIGINT"])
def test_interrupted_run_resumes_without_rewriting(ray_session, model_uri, tmp_path, sig):
    src, out = tmp_path / "in", tmp_path / "out"
    # The first run cuts each photo into many small tiles (one forward pass each), so that plenty
    # of work is still queued when the driver is stopped; the runs after it take a photo per pass.
    n = 16
    for i in range(n):
        (src / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_texture(128, 128, i)).save(src / f"d{i % 2}/p{i:02d}.png")
    camera = ["camera.focus_distance=0.5", "camera.focal_length=0.0029", "camera.f_number=1", "camera.pixel_size=1.2e-5"]
    args = ["infer", "--model", model_uri, "--input", str(src), "--out", str(out), "batch_size=1", "io_batch=1", "tile=32",
            "overlap=8", *camera]
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-m", "dfd_ray.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list((out / "_manifest").glob("*.parquet")):
        time.sleep(0.05)
    proc.send_signal(sig)  # a crash of the driver mid-run, or Ctrl-C
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "stopped by SIGINT" in err and "Traceback" not in err, err
    first = {r["input"]: r for r in _table(str(out), "manifest")}
    assert 0 < len(first) < n, f"the interruption did not land mid-run ({len(first)} of {n} written)"
    stamps = {u: os.stat(r["depth"]).st_mtime_ns for u, r in first.items()}

    summary = infer.run(load_config(infer.InferConfig, [f"model={model_uri}", f"input={src}", f"out={out}",
                                                        "batch_size=2", *camera]))
    assert (summary["done"], summary["skipped"], summary["errors"]) == (n - len(first), len(first), 0)
    rows = _table(str(out), "manifest")
    assert len(rows) == len({r["input"] for r in rows}) == n  # every photo once
    assert all(os.stat(first[u]["depth"]).st_mtime_ns == t for u, t in stamps.items())  # none rewritten
    assert {os.path.relpath(r["depth"], out) for r in rows} == {f"d{i % 2}/p{i:02d}.png.depth.png" for i in range(n)}

    redo = infer.run(load_config(infer.InferConfig, [f"model={model_uri}", f"input={src}", f"out={out}",
                                                     "overwrite=true", *camera]))
    assert (redo["done"], redo["skipped"]) == (n, 0) and len(_table(str(out), "manifest")) == n


def test_focal_stack_dataset_input_fuses_each_stack(ray_session, model_uri, tmp_path):
    synth.run(load_config(synth.SynthConfig, [f"out={tmp_path}/data", "n_scenes=1", "n_test=2", "height=32",
                                              "width=40", "seed=2"]))
    out = tmp_path / "out"
    summary = infer.run(_cfg(model_uri, f"{tmp_path}/data/test", out))
    rows = _table(str(out), "manifest")
    assert summary["done"] == len(rows) == 10 and summary["errors"] == 0 and summary["scenes_fused"] == 2
    assert {r["camera_source"] for r in rows} == {"stack"}
    assert {round(r["focus_distance"], 6) for r in rows} == {0.1, 0.15, 0.3, 0.7, 1.5}  # float32 in the stack
    scene = rows[0]["scene_id"]
    assert (out / scene / "slice0.depth.png").exists() and (out / "_scenes" / f"{scene}.depth.png").exists()


@pytest.mark.parametrize("overrides, message", [
    (["model=/nonexistent/model"], "config key 'model'"),
    (["input={tmp}/empty"], "config key 'input': no PNG, JPEG or TIFF"),
    (["manifest={tmp}/missing.csv"], "config key 'manifest'"),
    (["overlap=200"], "overlap"),
    (["camera.f_number=-2"], "camera.f_number"),
])
def test_config_errors_fail_before_any_work(model_uri, tmp_path, capsys, overrides, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.png").write_bytes(_png(_texture(8, 8)))
    base = {"model": model_uri, "input": str(tmp_path / "in"), "out": str(tmp_path / "out")}
    for o in overrides:
        key, value = o.split("=", 1)
        base[key] = value.replace("{tmp}", str(tmp_path))
    assert cli.main(["infer", *[f"{k}={v}" for k, v in base.items()]]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_shipped_model_loads_and_infers_a_photo_with_no_model_given(ray_session, tmp_path):
    from dfd_ray.models.store import SHIPPED, load_model

    model, meta = load_model("")  # "" is the shipped fod500 model (docs/model_card.md)
    assert meta["supervision"] == "self" and meta["trained_steps"] > 0
    assert sum(os.path.getsize(os.path.join(SHIPPED, f)) for f in os.listdir(SHIPPED)) < 10 * 2**20
    storage.write_bytes(str(tmp_path / "photos" / "p.png"), _png(_texture(64, 72, 9)))
    cfg = load_config(infer.InferConfig, [f"input={tmp_path / 'photos'}", f"out={tmp_path / 'depth'}", "ray_cpus=4",
                                          "camera.focus_distance=0.3", "camera.focal_length=0.0029",
                                          "camera.f_number=1.0", "camera.pixel_size=1.2e-5"])
    assert infer.run(cfg)["done"] == 1
    row = _table(str(tmp_path / "depth"), "manifest")[0]
    depth = _read_depth(row["depth"])  # 16-bit millimetres
    assert depth.shape == (64, 72) and np.isfinite(depth).all()
    lo, hi = model.cfg.min_depth, model.cfg.max_depth
    assert lo - 1e-3 <= depth.min() and depth.max() <= hi + 1e-3


@pytest.mark.parametrize("depth_m", [0.2, 0.45])
def test_scene_fusion_recovers_a_depth_through_the_lens_on_either_side(model_uri, tmp_path, depth_m):
    from dfd_ray import optics

    # Two photos of one flat surface focused at 0.3 m and 0.7 m, their defocus maps exact: either
    # photo alone has a root on each side of its focus plane, together they have one depth.
    members = []
    for k, s in enumerate((0.3, 0.7)):
        coc = np.full((8, 8), optics.coc_px(depth_m, s, 2.9e-3, 1.0, 1.2e-5), np.float32)
        maps = np.stack([np.zeros_like(coc), coc, np.log(np.full_like(coc, 0.05)), np.zeros_like(coc)])
        depth_uri = str(tmp_path / f"p{k}.depth.png")
        storage.write_bytes(infer.defocus_uri(depth_uri), infer.encode_defocus(maps))
        members.append({"input": f"p{k}", "depth": depth_uri, "focus_distance": s, "focal_length": 2.9e-3,
                        "f_number": 1.0, "pixel_size": 1.2e-5})
    row = infer.fuse_scene({"scene_id": "flat", "members": members}, str(tmp_path), model_uri)
    assert row["message"] == "" and row["members"] == 2
    assert float(np.median(_read_depth(row["depth"]))) == pytest.approx(depth_m, rel=0.03)
