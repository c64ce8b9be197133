"""A loopback HTTP server (127.0.0.1, threads) that serves weights files and can misbehave on request.

`server.files[path] = bytes` serves a file; `server.mode[path]` makes that path misbehave:
"cut" (sends the full Content-Length, half the bytes, then closes), "hang" (accepts and never
answers), "stall" (sends the headers and half the bytes, then never sends more), "403".
Unknown paths get 404. `server.requests` lists the paths asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append(self.path)
        mode = srv.mode.get(self.path, "ok")
        if mode == "hang":
            srv.release.wait(30)
            return
        if mode == "403":
            self.send_error(403, "Forbidden")
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if mode in ("cut", "stall"):
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            if mode == "stall":
                srv.release.wait(30)
            self.close_connection = True
            return
        self.wfile.write(data)


@contextlib.contextmanager
def weights_server() -> Iterator[ThreadingHTTPServer]:
    """Start the server on a free port of 127.0.0.1; `server.url` is its base URL."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files, srv.mode, srv.requests = {}, {}, []
    srv.release = threading.Event()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()


def tiny_weights(seed: int = 0) -> bytes:
    """A small real state dict, as torch.save writes it."""
    import torch

    g = torch.Generator().manual_seed(seed)
    buf = io.BytesIO()
    torch.save({"w": torch.randn(64, 64, generator=g), "b": torch.zeros(64)}, buf)
    return buf.getvalue()


def hashed_name(stem: str, data: bytes) -> str:
    """torchvision's naming: `<stem>-<first 8 hex digits of the SHA-256>.pth`."""
    return f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
