"""A local HTTP image server on 127.0.0.1 for fetch tests (the only host tests fetch from)."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.images import encode, photo

PNG = encode(photo(64, 48), "PNG")
JPEG_LARGE = encode(photo(1600, 1200, seed=3), "JPEG", quality=90)


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _trickle(self, body: bytes, content_type: str, *, parts: int, pause_s: float) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            step = max(1, len(body) // parts)
            for i in range(0, len(body), step):
                time.sleep(pause_s)
                self.wfile.write(body[i:i + step])
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):  # noqa: N802
        port = self.server.server_address[1]
        routes = {
            "/img.png": (200, PNG, {"Content-Type": "image/png"}),
            "/photo.jpg": (200, JPEG_LARGE, {"Content-Type": "image/jpeg"}),
            "/missing.png": (404, b"nope", {}),
            "/big.bin": (200, b"x" * 3_000_000, {}),
            "/text.txt": (200, b"this is not an image", {}),
            "/redirect": (302, b"", {"Location": "/img.png"}),
            "/redirect-loop": (302, b"", {"Location": "/redirect-loop"}),
            "/redirect-out": (302, b"", {"Location": f"http://127.0.0.2:{port}/img.png"}),
        }
        if self.path == "/slow":
            time.sleep(3)
        if self.path == "/slow.png":  # a valid image trickled over ~3 s, 0.5 s between reads
            self._trickle(PNG, "image/png", parts=6, pause_s=0.5)
            return
        status, body, headers = routes.get(self.path, (404, b"", {}))
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


@contextmanager
def image_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
