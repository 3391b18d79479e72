"""``slide2expr view --serve``: the viewer folder over HTTP on 127.0.0.1 (never other hosts).

Only regular files that resolve inside the folder are served: a symlink in the folder that
points elsewhere (``leak -> /etc/passwd``) is 404, and a folder is never listed (403; a folder
with an ``index.html`` serves that page).
"""

from __future__ import annotations

import errno
import functools
import http.server
import io
import logging
import threading
from pathlib import Path
from typing import ClassVar

from slide2expr.errors import InputError

log = logging.getLogger(__name__)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with the right types for the viewer, logging through ``logging``."""

    extensions_map: ClassVar[dict[str, str]] = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".dzi": "application/xml",
                      ".jpeg": "image/jpeg", ".json": "application/json"}

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def send_head(self) -> io.BufferedIOBase | None:
        """Refuse what is not a regular file inside the folder before serving it."""
        path = Path(self.translate_path(self.path))
        if path.is_dir() and not (path / "index.html").is_file():
            self.send_error(403, "Directory listing is not allowed")
            return None
        target = path / "index.html" if path.is_dir() else path
        root = Path(self.directory).resolve()
        try:
            real = target.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            real = None
        if real is None or not real.is_relative_to(root) or not real.is_file():
            self.send_error(404, "File not found")
            return None
        return super().send_head()

    def list_directory(self, path: str) -> io.BytesIO | None:  # never reached: send_head
        self.send_error(403, "Directory listing is not allowed")
        return None


def make_server(folder: str | Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    """An HTTP server for ``folder`` on 127.0.0.1 (``port`` 0: any free port).

    Raises
    ------
    InputError
        When ``port`` is in use, or may not be opened by this user.
    """
    handler = functools.partial(_QuietHandler, directory=str(folder))
    try:
        return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise InputError(None, f"port {port} on 127.0.0.1 is already in use by another "
                             "program", "pass another --port, or --port 0 for any free "
                             "one") from None
        if exc.errno == errno.EACCES:
            raise InputError(None, f"port {port} may not be opened by this user (ports below "
                             "1024 need root)", "pass --port 0 or a port above 1023") from None
        raise


def viewer_url(server: http.server.ThreadingHTTPServer) -> str:
    """The page's URL on ``server``."""
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/index.html"


def serve_in_thread(folder: str | Path, port: int = 0) -> tuple[http.server.ThreadingHTTPServer,
                                                                threading.Thread]:
    """Start serving ``folder`` in a daemon thread; stop with ``server.shutdown()``."""
    server = make_server(folder, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
