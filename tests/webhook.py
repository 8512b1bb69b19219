"""A real alert webhook for tests: an HTTP server on a free loopback port, in a thread."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Webhook:
    """A loopback HTTP server that records every POST and answers with `statuses` in turn,
    then 200; with `hang`, it reads the request and never answers."""

    def __init__(self, statuses: tuple[int, ...] = (), hang: bool = False) -> None:
        self.posts: list[dict] = []
        self.statuses = list(statuses)
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = hook.statuses.pop(0) if hook.statuses else 200
                hook.posts.append(
                    {"raw": raw, "body": json.loads(raw), "headers": dict(self.headers), "status": status}
                )
                if hang:
                    hook.release.wait(120)
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/backup"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def posts_for(self, subject: str) -> list[dict]:
        """Earlier tests' alerts may still be retrying: look only at this test's."""
        return [
            p
            for p in self.posts
            if subject in (p["body"].get("run_id"), p["body"].get("drill_id"), p["body"].get("expected_at"))
        ]

    def wait_for(self, subject: str, count: int, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.posts_for(subject)) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.posts_for(subject)

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
