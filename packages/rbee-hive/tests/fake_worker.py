"""A FAKE rbee worker for the hive's tests: no model, no torch, only the worker's process contract.

It accepts the real worker's flags (docs/tiers.md, worker), binds 127.0.0.1:0 itself, prints the
``RBEE_WORKER_LISTENING {"port": ..., "worker_id": ...}`` line, and serves ``/ready`` and
``/health`` with the stdlib's http.server. Flags starting with ``--fake-`` script misbehaviour:

    --fake-ready-after S      /ready says "loading" for S seconds, then ready (default 0.1)
    --fake-crash-after S      exit with status 3, S seconds after becoming ready
    --fake-exit-early N       exit with status N before listening
    --fake-fail-load          /ready says the model failed to load
    --fake-ignore-term        ignore SIGTERM (the hive must SIGKILL it)
    --fake-child              start a grandchild (sleep) in the same process group, print its pid
    --fake-traceback          print a Python traceback on stderr before it listens

Like the real worker, it answers ``/ready`` only to a caller presenting ``RBEE_WORKER_TOKEN``
(``Authorization: Bearer``) when its environment has one: 401 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rbee_contracts.worker_cli import listening_line


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--engine", default="auto")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--worker-id", required=True)
    p.add_argument("--model-name", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--engine-arg", action="append", default=[])
    p.add_argument("--tls-cert", default=None)
    p.add_argument("--tls-key", default=None)
    p.add_argument("--allowed-host", action="append", default=[])
    p.add_argument("--fake-ready-after", type=float, default=0.1)
    p.add_argument("--fake-crash-after", type=float, default=None)
    p.add_argument("--fake-exit-early", type=int, default=None)
    p.add_argument("--fake-fail-load", action="store_true")
    p.add_argument("--fake-ignore-term", action="store_true")
    p.add_argument("--fake-child", action="store_true")
    p.add_argument("--fake-traceback", action="store_true")
    args = p.parse_args()

    if args.fake_ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"fake worker {args.worker_id}: model {args.model} engine {args.engine}", flush=True)
    print(f"fake worker args: {' '.join(sys.argv[1:])}", file=sys.stderr, flush=True)
    token = os.environ.get("RBEE_WORKER_TOKEN")
    if args.fake_traceback:
        try:
            raise ValueError("fake load failure in a frame")
        except ValueError:
            traceback.print_exc()
    if args.fake_exit_early is not None:
        print("fake worker: exiting before it listens", file=sys.stderr, flush=True)
        sys.exit(args.fake_exit_early)
    if args.fake_child:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print(f"fake worker child pid {child.pid}", flush=True)

    started = time.monotonic()
    name = args.model_name or os.path.basename(args.model)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *a: object) -> None:
            pass

        def _json(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            presented = self.headers.get("Authorization")
            if token is not None and self.path != "/health" and presented != f"Bearer {token}":
                self._json(401, {"error": {"code": "unauthorized", "message": "no token"}})
                return
            if self.path == "/health":
                self._json(200, {"status": "ok"})
            elif self.path == "/ready":
                if args.fake_fail_load:
                    self._json(
                        503, {"ready": False, "state": "failed", "error": "fake load failure"}
                    )
                elif time.monotonic() - started >= args.fake_ready_after:
                    self._json(
                        200, {"ready": True, "model": name, "engine": "fake", "load_seconds": 0.1}
                    )
                else:
                    self._json(503, {"ready": False, "state": "loading", "error": None})
            else:
                self._json(404, {"error": {"code": "not_found", "message": self.path}})

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    if args.tls_cert is not None:  # serve HTTPS with the hive's certificate, as the worker does
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    print(listening_line(port, args.worker_id), flush=True)

    if args.fake_crash_after is not None:
        time.sleep(args.fake_ready_after + args.fake_crash_after)
        print("fake worker: crashing on purpose", file=sys.stderr, flush=True)
        os._exit(3)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
