"""``slide2expr view --serve``: the viewer folder over HTTP on 127.0.0.1 (never other hosts)."""

from __future__ import annotations

import functools
import http.server
import logging
import threading
from pathlib import Path
from typing import ClassVar

log = logging.getLogger(__name__)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with the right types for the viewer, logging through ``logging``."""

    extensions_map: ClassVar[dict[str, str]] = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".dzi": "application/xml",
                      ".jpeg": "image/jpeg", ".json": "application/json"}

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def make_server(folder: str | Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    """An HTTP server for ``folder`` on 127.0.0.1 (``port`` 0: any free port)."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)


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
