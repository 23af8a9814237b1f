"""A fault-injecting TCP proxy, for tests and benchmarks of the object-store paths
(docs/reliability.md): put it in front of an S3 endpoint (moto's server) and point
AWS_ENDPOINT_URL at it to make the store refuse connections, drop them mid-response or answer
503 SlowDown for a set time.
"""

from __future__ import annotations

import socket
import threading
import time

SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")
MODES = ("up", "refuse", "drop", "slowdown")


class FaultyProxy:
    """Listens on 127.0.0.1:<port> and forwards to `upstream` ("http://host:port") while `mode` is
    "up". "refuse": connections are closed unanswered; "drop": the request reaches the store but the
    connection closes after the first bytes of its answer; "slowdown": HTTP 503 SlowDown."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self._mode = "up"
        self._until = 0.0
        self.counts = {m: 0 for m in MODES}  # connections served per mode
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def mode(self) -> str:
        if self._mode != "up" and time.monotonic() >= self._until:
            self._mode = "up"
        return self._mode

    def fault(self, mode: str, seconds: float) -> None:
        """Fail every connection the way `mode` says for the next `seconds`, then serve again."""
        assert mode in MODES, mode
        self._until = time.monotonic() + seconds
        self._mode = mode

    def close(self) -> None:
        self._stop.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            mode = self.mode
            self.counts[mode] += 1
            threading.Thread(target=self._serve, args=(client, mode), daemon=True).start()

    def _serve(self, client: socket.socket, mode: str) -> None:
        try:
            if mode == "refuse":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                return  # closed with a reset, nothing read
            if mode == "slowdown":
                _read_request_head(client)
                client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
                               + f"Content-Length: {len(SLOW_DOWN)}\r\n\r\n".encode() + SLOW_DOWN)
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=_pump, args=(client, upstream, None), daemon=True).start()
            _pump(upstream, client, 64 if mode == "drop" else None)
            upstream.close()
        except OSError:
            pass
        finally:
            client.close()


def _read_request_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _pump(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
    """Copy src → dst until src closes, or until `limit` bytes when given (then both close)."""
    sent = 0
    try:
        while True:
            chunk = src.recv(65536)
            if not chunk:
                break
            if limit is not None:
                chunk = chunk[: limit - sent]
            dst.sendall(chunk)
            sent += len(chunk)
            if limit is not None and sent >= limit:
                break
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
