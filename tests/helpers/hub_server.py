"""A Hugging Face Hub look-alike on 127.0.0.1, enough for `huggingface_hub.hf_hub_download`.

It answers `HEAD`/`GET /<repo_id>/resolve/<revision>/<filename>` with the headers the client
reads (X-Repo-Commit, ETag, Content-Length) and 404 + `X-Error-Code: EntryNotFound` for any other
file, so tl's timm path is tested through `HF_ENDPOINT` with the real client, not a stub.
"""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@contextmanager
def serve_hub(files: dict[str, bytes]):
    """Serve `{"<repo_id>/<filename>": bytes}`; yields (endpoint URL, list of request paths seen)."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: bool) -> None:
            seen.append(f"{self.command} {self.path}")
            repo_and_rest = self.path.split("?")[0].lstrip("/")
            repo, sep, rest = repo_and_rest.partition("/resolve/")
            filename = rest.partition("/")[2] if sep else ""
            data = files.get(f"{repo}/{filename}")
            if data is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Error-Message", "Entry not found")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_HEAD(self):  # noqa: N802 - http.server's naming
            self._answer(body=False)

        def do_GET(self):  # noqa: N802
            self._answer(body=True)

        def log_message(self, *args):  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def timm_weights_bytes(model: str, seed: int = 123) -> bytes:
    """A timm model's randomly initialised weights (seeded, not tl's seed 0) as safetensors bytes."""
    import timm
    import torch
    from safetensors.torch import save

    torch.manual_seed(seed)
    net = timm.create_model(model, pretrained=False)
    return save({k: v.contiguous() for k, v in net.state_dict().items()})
