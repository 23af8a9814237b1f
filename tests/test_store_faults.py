"""The object store at fault: refused and dropped connections and 503 SlowDown for a while cost
time, not a failed job; a store that stays down gives one line naming the URI."""

import io
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from dfd_ray import storage


@pytest.mark.parametrize("mode", ["refuse", "drop", "slowdown"])
def test_reads_and_writes_ride_through_a_short_outage(faulty_s3, mode):
    proxy, bucket = faulty_s3
    storage.write_bytes(f"{bucket}/before.bin", b"x" * 1000)
    proxy.fault(mode, seconds=3)
    storage.write_bytes(f"{bucket}/during.bin", b"y" * 5000)
    assert storage.read_bytes(f"{bucket}/during.bin") == b"y" * 5000
    assert storage.read_bytes(f"{bucket}/before.bin") == b"x" * 1000
    assert storage.list_files(bucket, "*.bin") == [f"{bucket}/before.bin", f"{bucket}/during.bin"]
    assert proxy.counts[mode] > 0  # the fault was met, not missed


def test_the_arrow_filesystem_uploads_a_checkpoint_through_an_outage(faulty_s3, tmp_path):
    """Ray Train copies its checkpoint folders through `storage.arrow_filesystem`."""
    import pyarrow.fs as pafs

    proxy, bucket = faulty_s3
    (tmp_path / "ckpt" / "sub").mkdir(parents=True)
    (tmp_path / "ckpt" / "model.pt").write_bytes(b"w" * 20000)
    (tmp_path / "ckpt" / "sub" / "state.json").write_bytes(b"{}")
    fs, path = storage.arrow_filesystem(f"{bucket}/run/checkpoint_000001")
    # 15 s: longer than botocore's and s3fs's own retries ride out (a plain FSSpecHandler fails at ~10 s)
    proxy.fault("refuse", seconds=15)
    pafs.copy_files(str(tmp_path / "ckpt"), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    assert storage.read_bytes(f"{bucket}/run/checkpoint_000001/model.pt") == b"w" * 20000
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    assert sorted(i.path.rsplit("/", 2)[-1] for i in infos if i.type == pafs.FileType.File) == ["model.pt", "state.json"]
    assert proxy.counts["refuse"] > 0  # the fault was met, not missed


def test_a_store_that_stays_down_is_one_line_naming_the_uri(faulty_s3, monkeypatch):
    proxy, bucket = faulty_s3
    monkeypatch.setenv(storage.RETRY_BUDGET_ENV, "1")
    proxy.fault("refuse", seconds=600)
    with pytest.raises(storage.StoreUnavailable, match=f"{bucket}/a.bin: the object store did not answer"):
        storage.read_bytes(f"{bucket}/a.bin")
    assert not storage.transient(FileNotFoundError("s3://b/SlowDown.bin"))  # a missing file is never retried


def _photos(bucket: str, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
        storage.write_bytes(f"{bucket}/in/p{i:02d}.png", buf.getvalue())


CAMERA = ["camera.focus_distance=0.5", "camera.focal_length=0.0029", "camera.f_number=1", "camera.pixel_size=1.2e-5"]


@pytest.mark.slow
def test_infer_rides_through_an_outage_mid_run(ray_session, faulty_s3, model_uri):
    """The user's case: `dfd-ray infer` over s3:// with the store unreachable for a while mid-run
    finishes with every photo exactly once."""
    from dfd_ray import infer
    from dfd_ray.config import load_config

    proxy, bucket = faulty_s3
    n = 8
    _photos(bucket, n)
    out = f"{bucket}/out"
    def outage_once_writing():  # the first photo is written: the rest are in flight
        deadline = time.monotonic() + 300
        while not storage.list_files(f"{out}/_manifest", "*.parquet") and time.monotonic() < deadline:
            time.sleep(0.2)
        proxy.fault("refuse", 6.0)

    outage = threading.Thread(target=outage_once_writing, daemon=True)
    outage.start()
    summary = infer.run(load_config(infer.InferConfig, [f"model={model_uri}", f"input={bucket}/in", f"out={out}",
                                                        "batch_size=1", "io_batch=1", *CAMERA]))
    outage.join(timeout=60)
    rows = infer.read_table(out, infer.MANIFEST_DIR, infer.MANIFEST_SCHEMA).to_pylist()
    assert (summary["done"], summary["errors"]) == (n, 0) and len(rows) == len({r["input"] for r in rows}) == n
    assert proxy.counts["refuse"] > 0, "the outage never met a request"


def test_infer_against_a_dead_store_fails_in_one_line(faulty_s3, model_uri):
    proxy, bucket = faulty_s3
    proxy.fault("refuse", seconds=600)
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, storage.RETRY_BUDGET_ENV: "1"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "dfd_ray.cli", "infer", "--model", model_uri, "--input",
                           f"{bucket}/in", "--out", f"{bucket}/out", *CAMERA], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{bucket}/in" in last and "did not answer" in last, proc.stderr
    assert time.monotonic() - started < 300
