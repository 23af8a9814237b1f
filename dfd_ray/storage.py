"""Object-store access over any fsspec URL: plain paths, file://, s3:// (AWS_ENDPOINT_URL honoured).

s3fs reads the endpoint only from `client_kwargs`; pyarrow's S3FileSystem() ignores the variable
altogether (docs/design.md §5), so every filesystem in dfd-ray comes from here.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import IO

import fsspec
import pyarrow.fs as pafs
from fsspec.core import url_to_fs


TEMP_SUFFIX = ".dfd-tmp"  # what `open_write` names a local file while it is being written


def _storage_options(uri: str) -> dict:
    if uri.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
        return {"client_kwargs": {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}}
    return {}


def worker_runtime_env() -> dict:
    """Ray remote args that give workers this process's S3 endpoint (AWS_ENDPOINT_URL), for
    tasks and actors that open URIs themselves; workers may have started before it was set."""
    if os.environ.get("AWS_ENDPOINT_URL"):
        return {"runtime_env": {"env_vars": {"AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"]}}}
    return {}


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it) for `uri`."""
    fs, path = url_to_fs(uri, **_storage_options(uri))
    return fs, path


def arrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem wrapping the same fsspec filesystem (for pyarrow and Ray Data)."""
    fs, path = filesystem(uri)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(uri: str, *parts: str) -> str:
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}"
    return os.path.join(uri, *parts)


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


@contextlib.contextmanager
def open_write(uri: str) -> Iterator[IO[bytes]]:
    """A binary file to write `uri` through, which appears whole or not at all.

    Locally the bytes go to a hidden temporary name in the same folder that is renamed over `uri`
    when the block ends without an error (a rename within a folder is atomic), so a crash or a
    kill mid-write leaves the old file or none, never a torn one; an error removes the temporary.
    To an object store the bytes go in one PUT when the block ends, which is atomic. Power loss is not covered (no fsync: it would cost
    every small output file a disk flush).
    """
    fs, path = filesystem(uri)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if not is_local(uri):
        buf = io.BytesIO()  # a file object's close would upload what it holds even after an error
        yield buf
        fs.pipe_file(path, buf.getvalue())
        return
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_bytes(uri: str, data: bytes) -> None:
    """Write `data` to `uri` whole or not at all (`open_write`)."""
    with open_write(uri) as f:
        f.write(data)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    fs.invalidate_cache()
    return fs.exists(path)


def as_uri(path: str, like: str) -> str:
    """A path as filesystems and readers return it (no scheme; pyarrow's Parquet reader also drops
    the leading '/' of local paths) → a URI in the scheme of `like`."""
    if "://" in like and not like.startswith("file://"):
        protocol = like.split("://", 1)[0] + "://"
        return path if path.startswith(protocol) else protocol + path
    return path if path.startswith("/") else "/" + path


def list_files(uri: str, pattern: str) -> list[str]:
    """Full URIs of files directly under `uri` whose names match the glob `pattern`, sorted."""
    fs, path = filesystem(uri)
    fs.invalidate_cache()  # s3fs caches listings; a writer in this process may have added files
    return sorted(as_uri(p, uri) for p in fs.glob(posixpath.join(path.rstrip("/"), pattern)))
