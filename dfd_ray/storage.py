"""Object-store access over any fsspec URL: plain paths, file://, s3:// (AWS_ENDPOINT_URL honoured).

s3fs reads the endpoint only from `client_kwargs`; pyarrow's S3FileSystem() ignores the variable
altogether (docs/design.md §5), so every filesystem in dfd-ray comes from here.

Retries live here too. The S3 client retries each request (botocore's standard mode, bounded
connect and read timeouts), and every call of this module's own (read, write, exists, list) is
retried on a transient fault (connection refused or dropped, timeouts, 5xx, SlowDown) with a
fixed backoff for up to `DFD_RAY_STORE_RETRY_S` seconds (default 60), so that an outage of the
store costs time, not a failed job. Past that it raises `StoreUnavailable`, one line naming the URI.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator
from typing import IO, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
from fsspec.core import url_to_fs


T = TypeVar("T")
TEMP_SUFFIX = ".dfd-tmp"  # what `open_write` names a local file while it is being written
RETRY_BUDGET_ENV = "DFD_RAY_STORE_RETRY_S"
RETRY_BUDGET_S = 60.0  # default seconds of waiting for a store that does not answer
# Per request: a connect that hangs (a black-holed endpoint) gives up after 10 s, not botocore's 60.
S3_CLIENT_CONFIG = {"retries": {"max_attempts": 3, "mode": "standard"}, "connect_timeout": 10, "read_timeout": 60}
_TRANSIENT_WORDS = ("SlowDown", "reduce your request rate", "Service Unavailable", "ServiceUnavailable",
                    "InternalError", "RequestTimeout", "Bad Gateway", "Gateway Timeout")


class StoreUnavailable(OSError):
    """The object store did not answer within the retry budget."""


def _storage_options(uri: str) -> dict:
    if not uri.startswith("s3://"):
        return {}
    options: dict = {"config_kwargs": S3_CLIENT_CONFIG}
    if os.environ.get("AWS_ENDPOINT_URL"):
        options["client_kwargs"] = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
    return options


def transient(exc: BaseException) -> bool:
    """A fault that may pass if asked again: the store unreachable, slow or overloaded."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    try:
        import botocore.exceptions as boto
    except ImportError:  # no S3 support installed: nothing is an S3 fault
        return False
    if isinstance(exc, (boto.ConnectionError, boto.HTTPClientError, ConnectionError, TimeoutError)):
        return True
    try:
        import aiohttp
        if isinstance(exc, aiohttp.ClientError):
            return True
    except ImportError:
        pass
    text = str(exc)
    return isinstance(exc, (OSError, boto.ClientError)) and any(w in text for w in _TRANSIENT_WORDS)


# What botocore and s3fs say on the transient faults above: Ray Data retries a read whose error
# message holds one of these (DataContext.retried_io_errors; its defaults name only pyarrow's S3).
RAY_DATA_RETRIED_ERRORS = ("Could not connect to the endpoint URL", "Connection was closed before we received",
                           "Read timeout on endpoint URL", "Connect timeout on endpoint URL", *_TRANSIENT_WORDS)


def retry_in_ray_data() -> None:
    """Have this process's Ray Data retry reads on the store's transient faults (call before building
    a dataset: the context travels with it to its tasks)."""
    from ray.data import DataContext

    errors = DataContext.get_current().retried_io_errors
    errors.extend(e for e in RAY_DATA_RETRIED_ERRORS if e not in errors)


def retrying(uri: str, call: Callable[[], T]) -> T:
    """`call()`, asked again after transient faults of the store behind `uri` (backoff 0.5 s
    doubling to 8 s) until the retry budget is spent; then StoreUnavailable naming `uri`."""
    if is_local(uri):
        return call()
    budget = float(os.environ.get(RETRY_BUDGET_ENV, RETRY_BUDGET_S))
    started, delay, tries = time.monotonic(), 0.5, 0
    while True:
        tries += 1
        try:
            return call()
        except Exception as exc:
            if not transient(exc):
                raise
            waited = time.monotonic() - started
            if waited + delay > budget:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise StoreUnavailable(f"{uri}: the object store did not answer for {waited:.0f} s ({tries} tries; "
                                       f"last: {type(exc).__name__}: {first})") from None
            filesystem(uri)[0].invalidate_cache()
            time.sleep(delay)
            delay = min(2 * delay, 8.0)


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


class _Upload(io.BytesIO):
    """An output stream to an object store: the bytes go in one PUT, retried, when it closes."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, uri: str) -> None:
        super().__init__()
        self._fs, self._path, self._uri = fs, path, uri

    def close(self) -> None:
        if not self.closed:
            data = self.getvalue()
            retrying(self._uri, lambda: self._fs.pipe_file(self._path, data))
        super().close()


def _retried(method: Callable) -> Callable:
    """A pyarrow FileSystemHandler method (its first argument a path, a list of them or a
    FileSelector) under `retrying`."""
    def call(self: "_RetryingHandler", where, *rest):
        if isinstance(where, pafs.FileSelector):
            path = where.base_dir
        else:
            path = where[0] if isinstance(where, list) and where else where
        return retrying(f"{self.scheme}://{path}", lambda: method(self, where, *rest))
    return call


class _RetryingHandler(pafs.FSSpecHandler):
    """pyarrow's view of an object store with every call under `retrying`: Ray Train uploads its
    checkpoints and Ray Data lists and opens files through it, so they ride out an outage too."""

    def __init__(self, fs: fsspec.AbstractFileSystem, scheme: str) -> None:
        super().__init__(fs)
        self.scheme = scheme

    def open_output_stream(self, path, metadata):
        return pa.PythonFile(_Upload(self.fs, path, f"{self.scheme}://{path}"), mode="w")


for _name in ("get_file_info", "get_file_info_selector", "create_dir", "delete_dir", "delete_dir_contents",
              "delete_file", "move", "copy_file", "open_input_stream", "open_input_file"):
    setattr(_RetryingHandler, _name, _retried(getattr(pafs.FSSpecHandler, _name)))


def arrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem wrapping the same fsspec filesystem (for pyarrow, Ray Data and Ray
    Train); on an object store its calls are retried as this module's own."""
    fs, path = filesystem(uri)
    if is_local(uri):
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
    return pafs.PyFileSystem(_RetryingHandler(fs, uri.split("://", 1)[0])), path


def join(uri: str, *parts: str) -> str:
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}"
    return os.path.join(uri, *parts)


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def read_with(uri: str, read: Callable[[IO[bytes]], T]) -> T:
    """`read(file)` on `uri` opened for reading, retried as a whole on a transient fault."""
    fs, path = filesystem(uri)

    def call() -> T:
        with fs.open(path, "rb") as f:
            return read(f)

    return retrying(uri, call)


def read_bytes(uri: str) -> bytes:
    return read_with(uri, lambda f: f.read())


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
    if not is_local(uri):  # an object store has no folders to make
        buf = io.BytesIO()  # a file object's close would upload what it holds even after an error
        yield buf
        retrying(uri, lambda: fs.pipe_file(path, buf.getvalue()))
        return
    folder, name = os.path.split(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
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
    return retrying(uri, lambda: fs.exists(path))


def as_uri(path: str, like: str) -> str:
    """A path as filesystems and readers return it (no scheme; pyarrow's Parquet reader also drops
    the leading '/' of local paths) → a URI in the scheme of `like`."""
    if "://" in like and not like.startswith("file://"):
        protocol = like.split("://", 1)[0] + "://"
        return path if path.startswith(protocol) else protocol + path
    return path if path.startswith("/") else "/" + path


def list_tree(uri: str) -> list[str]:
    """Full URIs of every file under `uri`, recursively (or `uri` itself if it is a file), sorted."""
    fs, path = filesystem(uri)
    fs.invalidate_cache()
    found = retrying(uri, lambda: [path] if fs.isfile(path) else sorted(fs.find(path)))
    return [as_uri(p, uri) for p in found]


def is_dir(uri: str) -> bool:
    fs, path = filesystem(uri)
    return retrying(uri, lambda: fs.isdir(path))


def list_dir(uri: str) -> list[str]:
    """Full URIs of the files directly in the folder `uri` (not in its subfolders), sorted; hidden
    files (a leading '.') are skipped."""
    fs, path = filesystem(uri)
    fs.invalidate_cache()
    entries = retrying(uri, lambda: fs.ls(path, detail=True))
    return sorted(as_uri(e["name"], uri) for e in entries
                  if e.get("type") != "directory" and not posixpath.basename(e["name"].rstrip("/")).startswith("."))


def list_files(uri: str, pattern: str) -> list[str]:
    """Full URIs of files directly under `uri` whose names match the glob `pattern`, sorted."""
    fs, path = filesystem(uri)
    fs.invalidate_cache()  # s3fs caches listings; a writer in this process may have added files
    return sorted(as_uri(p, uri) for p in retrying(uri, lambda: fs.glob(posixpath.join(path.rstrip("/"), pattern))))
