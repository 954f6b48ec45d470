"""A loopback stand-in for Globus Auth + Flows, enough for the watcher's HTTP path.

Speaks: POST /v2/oauth2/token (client credentials), POST /flows/{id}/run, GET /runs (newest
first, `marker` pagination, `filter_flow_id`), GET /runs/{id}, GET /runs/{id}/log,
POST /runs/{id}/cancel. Control: GET /_stats (`?summary=1`: counts only), POST /_fail
{"count", "status", "retry_after"}.

    python benchmarks/flows_server.py --port-file /tmp/port   # prints nothing, serves forever

Point the SDK at it with GLOBUS_SDK_SERVICE_URL_FLOWS / GLOBUS_SDK_SERVICE_URL_AUTH.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

PAGE = 100
_FLOW_SCOPE = re.compile(r"/scopes/([0-9a-f-]{36})/flow_")


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[dict[str, Any]] = []  # oldest first
        self.by_id: dict[str, dict[str, Any]] = {}
        self.received: list[tuple[str, float]] = []
        self.fail: dict[str, Any] = {"count": 0}
        self.tokens = 0


STATE = State()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the SDK reuses its session
    # Headers and body go out in separate writes: without this, Nagle + delayed ACK adds
    # ~40 ms to every response on loopback, measuring the server instead of the watcher.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        del format, args

    def _send(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_POST(self) -> None:
        url = urlparse(self.path)
        raw = self._body()
        if url.path == "/v2/oauth2/token":
            form = parse_qs(raw.decode())
            scope = form.get("scope", [""])[0]
            match = _FLOW_SCOPE.search(scope)
            resource_server = match.group(1) if match else "flows.globus.org"
            with STATE.lock:
                STATE.tokens += 1
            self._send(
                200,
                {
                    "access_token": uuid.uuid4().hex,
                    "scope": scope,
                    "expires_in": 172800,
                    "token_type": "Bearer",
                    "resource_server": resource_server,
                    "other_tokens": [],
                },
            )
            return
        if url.path == "/_fail":
            with STATE.lock:
                STATE.fail = json.loads(raw or b"{}")
            self._send(200, STATE.fail)
            return
        match = re.fullmatch(r"/flows/([^/]+)/run", url.path)
        if match:
            now = time.time()
            with STATE.lock:
                if STATE.fail.get("count", 0) > 0:
                    STATE.fail["count"] -= 1
                    status = int(STATE.fail.get("status", 503))
                    headers = (
                        {"Retry-After": str(STATE.fail["retry_after"])}
                        if STATE.fail.get("retry_after") is not None
                        else {}
                    )
                    self._send(status, {"code": "UNAVAILABLE", "error": "injected"}, headers)
                    return
            request = json.loads(raw)
            run = {
                "run_id": str(uuid.uuid4()),
                "action_id": None,
                "flow_id": match.group(1),
                "status": "ACTIVE",
                "label": request.get("label"),
                "tags": request.get("tags", []),
                "start_time": datetime.fromtimestamp(now, UTC).isoformat(),
                "run_monitors": request.get("run_monitors", []),
                "run_managers": request.get("run_managers", []),
                "details": {"input": request.get("body")},
            }
            run["action_id"] = run["run_id"]
            with STATE.lock:
                STATE.runs.append(run)
                STATE.by_id[run["run_id"]] = run
                STATE.received.append((run["label"], now))
            self._send(201, run)
            return
        match = re.fullmatch(r"/runs/([^/]+)/cancel", url.path)
        if match and match.group(1) in STATE.by_id:
            STATE.by_id[match.group(1)]["status"] = "ENDED"
            self._send(200, STATE.by_id[match.group(1)])
            return
        self._send(404, {"code": "NOT_FOUND", "error": url.path})

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path == "/_stats" and query.get("summary"):
            # What pollers need, cheaply: the full document costs the server O(runs) each time.
            with STATE.lock:
                doc = {"runs": len(STATE.runs), "tokens": STATE.tokens}
            self._send(200, doc)
            return
        if url.path == "/_stats":
            with STATE.lock:
                counts: dict[str, int] = {}
                for run in STATE.runs:
                    counts[run["label"]] = counts.get(run["label"], 0) + 1
                doc = {
                    "runs": len(STATE.runs),
                    "labels": counts,
                    "received": STATE.received,
                    "tokens": STATE.tokens,
                }
            self._send(200, doc)
            return
        if url.path == "/runs":
            flows = set(",".join(query.get("filter_flow_id", [])).split(",")) - {""}
            start = int(query.get("marker", ["0"])[0])
            with STATE.lock:
                selected = [r for r in reversed(STATE.runs) if not flows or r["flow_id"] in flows]
            page = selected[start : start + PAGE]
            more = start + PAGE < len(selected)
            self._send(
                200,
                {
                    "runs": page,
                    "has_next_page": more,
                    "limit": PAGE,
                    "marker": str(start + PAGE) if more else None,
                },
            )
            return
        match = re.fullmatch(r"/runs/([^/]+)(/log)?", url.path)
        if match and match.group(1) in STATE.by_id:
            if match.group(2):
                self._send(
                    200,
                    {
                        "entries": [{"code": "FlowStarted", "description": "started"}],
                        "has_next_page": False,
                        "limit": 100,
                    },
                )
            else:
                self._send(200, STATE.by_id[match.group(1)])
            return
        self._send(404, {"code": "NOT_FOUND", "error": url.path})


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed with -9 mid-request (the chaos script) is expected, not news.
        del request, client_address


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path)
    args = parser.parse_args()
    server = Server(("127.0.0.1", args.port), Handler)
    if args.port_file:
        args.port_file.write_text(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
