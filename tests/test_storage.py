"""Writes that appear whole or not at all, locally and on S3."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from dfd_ray import storage


def test_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.bin"
    storage.write_bytes(str(target), b"first")
    storage.write_bytes(str(target), b"second, longer")
    assert target.read_bytes() == b"second, longer"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.bin"]


def test_an_error_mid_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.bin"
    storage.write_bytes(str(target), b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.open_write(str(target)) as f:
            f.write(b"half of the new")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_a_killed_writer_leaves_no_torn_file(tmp_path):
    """SIGKILL between the first and the last byte: the final name never holds the partial bytes."""
    target = tmp_path / "part-00000.parquet"
    script = textwrap.dedent(f"""
        import os, signal
        from dfd_ray import storage
        with storage.open_write({str(target)!r}) as f:
            f.write(b"x" * 1_000_000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".") and leftovers[0].endswith(storage.TEMP_SUFFIX)
    assert storage.list_files(str(tmp_path), "*.parquet") == []  # readers never see the temporary


def test_s3_write_and_read_back(s3_bucket):
    uri = f"{s3_bucket}/atomic/a.bin"
    storage.write_bytes(uri, b"payload")
    with pytest.raises(RuntimeError):
        with storage.open_write(f"{s3_bucket}/atomic/b.bin") as f:
            f.write(b"never")
            raise RuntimeError("stop")
    assert storage.read_bytes(uri) == b"payload"
    assert not storage.exists(f"{s3_bucket}/atomic/b.bin")
