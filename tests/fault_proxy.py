"""A fault-injecting HTTP proxy on loopback, in front of moto's SQS server.

boto3 speaks SQS's JSON protocol (`X-Amz-Target: AmazonSQS.<Action>`). The proxy can answer a
whole call with an HTTP error, delay it, or fail chosen entries of a SendMessageBatch the way SQS
does (HTTP 200 with `Failed` items): failed entries are taken out of the request before it reaches
moto, so what moto stores is exactly what the client was told was accepted.
"""

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

EntryFault = Callable[[dict[str, Any], int], tuple[str, bool] | None]
"""(entry, attempt number for its Id, from 1) -> (error code, sender fault) or None to pass."""
RequestFault = Callable[[str, int], int | None]
"""(action, call number for that action, from 1) -> HTTP status to answer with, or None."""


class FaultProxy:
    """Forwards to `upstream`, injecting the faults it is given; use as a context manager."""

    def __init__(
        self,
        upstream: str,
        entry_fault: EntryFault | None = None,
        request_fault: RequestFault | None = None,
        delay_seconds: float = 0.0,
    ) -> None:
        self.upstream = urlsplit(upstream)
        self.entry_fault = entry_fault
        self.request_fault = request_fault
        self.delay_seconds = delay_seconds
        self.entry_attempts: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.injected_entry_faults = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple:
        connection = http.client.HTTPConnection(
            self.upstream.hostname, self.upstream.port, timeout=30
        )
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def _split_batch(self, body: bytes) -> tuple[bytes, list[dict[str, Any]], int]:
        request = json.loads(body)
        kept, failed = [], []
        for entry in request.get("Entries", []):
            with self._lock:
                self.entry_attempts[entry["Id"]] += 1
                attempt = self.entry_attempts[entry["Id"]]
            fault = self.entry_fault(entry, attempt) if self.entry_fault else None
            if fault is None:
                kept.append(entry)
                continue
            code, sender_fault = fault
            failed.append(
                {
                    "Id": entry["Id"],
                    "SenderFault": sender_fault,
                    "Code": code,
                    "Message": "injected",
                }
            )
        with self._lock:
            self.injected_entry_faults += len(failed)
        request["Entries"] = kept
        return json.dumps(request).encode(), failed, len(kept)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                action = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
                with proxy._lock:
                    proxy.calls[action] += 1
                    call = proxy.calls[action]
                if proxy.delay_seconds:
                    time.sleep(proxy.delay_seconds)
                status = proxy.request_fault(action, call) if proxy.request_fault else None
                if status is not None:
                    error = {
                        "__type": "com.amazonaws.sqs#ServiceUnavailable",
                        "message": "injected",
                    }
                    self._reply(status, json.dumps(error).encode(), "application/x-amz-json-1.0")
                    return
                failed: list[dict[str, Any]] = []
                if action == "SendMessageBatch" and proxy.entry_fault:
                    body, failed, kept = proxy._split_batch(body)
                    if not kept:
                        reply = {"Successful": [], "Failed": failed}
                        self._reply(200, json.dumps(reply).encode(), "application/x-amz-json-1.0")
                        return
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in {"host", "content-length"}
                }
                status, response_headers, response_body = proxy._forward(
                    "POST", self.path, headers, body
                )
                if failed and status == 200:
                    reply = json.loads(response_body)
                    reply["Failed"] = reply.get("Failed", []) + failed
                    response_body = json.dumps(reply).encode()
                content_type = dict(response_headers).get(
                    "Content-Type", "application/x-amz-json-1.0"
                )
                self._reply(status, response_body, content_type)

        return Handler
