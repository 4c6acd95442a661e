"""A throwaway HTTP server on 127.0.0.1 for tests that need a peer (a fake judge, a trickling one).

    with local_server(FakeJudge) as url:        # http://127.0.0.1:PORT
        ...
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import ThreadingHTTPServer


@contextmanager
def local_server(handler):
    """Serve `handler` (a BaseHTTPRequestHandler class) on a free port in a daemon thread; shut down after."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
