"""An HTTP proxy in the test's own process, in front of a test `mlflow server` (not a
test module): it forwards every request to the server, holds the metric-logging calls
(`runs/log-batch`) while its gate is shut, and records what went through, so a test
can make the store slow for exactly the calls it chooses and see what the client sent.

    gate = HttpGate(server.port); gate.shut(); ... gate.open(); gate.close()

`gate.points[(key, step)]` counts the metric points that reached the server;
`gate.overlaps` lists the metric calls (history reads or log-batch) that reached it
while a log-batch was still under way: two writers of one run's metrics at once.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG_BATCH, HISTORY = "/runs/log-batch", "/metrics/get-history"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}
UPSTREAM_SECONDS = 300  # the server's answer to one call (a loaded machine is slow)


class HttpGate:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self._open = threading.Event()
        self._open.set()
        self._cond = threading.Condition()
        self.points: Counter = Counter()
        self.overlaps: list[str] = []
        self.held = 0       # log-batch calls waiting at the shut gate now
        self.in_flight = 0  # log-batch calls received and not yet answered
        self.seen: list[str] = []  # the paths of the calls, in the order they came
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-gate", daemon=True)
        self._thread.start()

    def shut(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def wait(self, predicate, seconds: float) -> bool:
        """Until predicate(self) holds (checked whenever a call comes or goes), at most `seconds`."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), seconds)

    def close(self) -> None:
        self._open.set()
        self._server.shutdown()
        self._server.server_close()

    def _forward(self, method: str, path: str, headers, body: bytes):
        is_batch, is_metrics = path.endswith(LOG_BATCH), path.split("?")[0].endswith((LOG_BATCH, HISTORY))
        with self._cond:
            self.seen.append(path)
            if is_metrics and self.in_flight:
                self.overlaps.append(path)
            hold = is_batch and not self._open.is_set()
            if is_batch:
                self.in_flight += 1
                self.held += hold
            self._cond.notify_all()
        try:
            if hold:
                self._open.wait()
                with self._cond:
                    self.held -= 1
                    self._cond.notify_all()
            conn = http.client.HTTPConnection("127.0.0.1", self.target_port, timeout=UPSTREAM_SECONDS)
            try:
                conn.request(method, path, body=body or None,
                             headers={k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP})
                reply = conn.getresponse()
                answer = (reply.status, reply.getheaders(), reply.read())
            finally:
                conn.close()
            if is_batch and answer[0] == 200:
                with self._cond:
                    for m in json.loads(body).get("metrics", []):
                        self.points[(m["key"], int(m["step"]))] += 1
            return answer
        finally:
            if is_batch:
                with self._cond:
                    self.in_flight -= 1
                    self._cond.notify_all()

    def _handler(self):
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers, payload = gate._forward(self.command, self.path, self.headers, body)
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

            def log_message(self, *args):  # quiet: the test reads `seen`
                pass

        return Handler
