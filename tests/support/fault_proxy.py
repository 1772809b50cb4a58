"""A fault-injecting HTTP proxy on loopback, in front of moto's SQS server.

boto3 speaks SQS's JSON protocol (`X-Amz-Target: AmazonSQS.<Action>`, `x-amz-json-1.0`). The
proxy injects, per call:

- whole-call errors worded as SQS words them: HTTP 400 `RequestThrottled` and
  `ThrottlingException`, 500 `InternalFailure`, 503 `ServiceUnavailable` (botocore's standard
  mode retries all four);
- a read timeout (the reply held past the client's read timeout, then dropped) and a TCP reset
  (the connection closed with RST, no reply), each either before the request reaches moto or
  after moto has stored the batch. The second kind is the dangerous one: SQS accepted the
  messages and the client never heard, so the resend is a duplicate on a standard queue and is
  absorbed by the deduplication id on a FIFO queue;
- `Failed` entries of a SendMessageBatch, as SQS reports them (HTTP 200), taken out of the
  request so moto stores exactly what the client is told was accepted;
- latency, and a hook called when a request arrives and when moto has answered it (to kill a
  client or a database connection at that moment).

Patterns are functions of the call (action, call number, attempt for the same entries, entry
ids), so a seeded pattern (`random_faults`, `random_entry_faults`) faults the same batches
however threads interleave. The proxy counts what it injected (`injected`), what reached moto
(`forwarded`), and the entries moto stored whose answer never reached the client
(`unanswered_entries`): at most that many duplicates can appear on a standard queue.

SQS drops a FIFO message whose deduplication id it accepted in the last five minutes, even if
that message was received and deleted since, and answers the resend with success (LocalStack,
whose FIFO behaviour is checked against AWS, answers with the first message's id). moto forgets
deleted messages and answers with a new id. The proxy therefore deduplicates FIFO sends itself,
as SQS does: a resend is answered with the first message's id and not forwarded
(`deduplicated_entries` counts them), so a test may drain the queue between runs.
"""

import contextlib
import enum
import hashlib
import http.client
import json
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

JSON_CONTENT_TYPE = "application/x-amz-json-1.0"
# SQS drops a FIFO message whose deduplication id it saw in the last five minutes.
DEDUPLICATION_SECONDS = 300.0
# What an injected fault says: SQS's messages may quote the value they refuse, a phone number
# here, which must reach neither a log nor a recipient's failure_reason unmasked.
INJECTED_PHONE_NUMBER = "+14155550123"
INJECTED_MESSAGE = f"injected: value {INJECTED_PHONE_NUMBER} is not valid"
INJECTED_REASON = "injected: value ***23 is not valid"


class Fault(enum.Enum):
    """What the proxy does to a whole call instead of forwarding it normally."""

    THROTTLED = "400 RequestThrottled"
    THROTTLING_EXCEPTION = "400 ThrottlingException"
    INTERNAL_ERROR = "500 InternalFailure"
    SERVICE_UNAVAILABLE = "503 ServiceUnavailable"
    TIMEOUT = "read timeout"
    TIMEOUT_AFTER_FORWARD = "read timeout after SQS stored it"
    RESET = "connection reset"
    RESET_AFTER_FORWARD = "connection reset after SQS stored it"

    @property
    def after_forward(self) -> bool:
        """Whether moto stores the request before the client is failed."""
        return self in (Fault.TIMEOUT_AFTER_FORWARD, Fault.RESET_AFTER_FORWARD)


# fault -> (HTTP status, error code, x-amzn-query-error fault side) of SQS's JSON error replies
HTTP_ERRORS = {
    Fault.THROTTLED: (400, "RequestThrottled", "Sender"),
    Fault.THROTTLING_EXCEPTION: (400, "ThrottlingException", "Sender"),
    Fault.INTERNAL_ERROR: (500, "InternalFailure", "Receiver"),
    Fault.SERVICE_UNAVAILABLE: (503, "ServiceUnavailable", "Receiver"),
}


@dataclass(frozen=True)
class Call:
    """One request as the proxy received it."""

    action: str
    number: int
    """Calls of this action so far, this one included (from 1)."""
    attempt: int
    """Times a request with this action and these entry ids arrived (from 1): botocore's
    retries of one batch are attempts 2, 3, ...; a resend of some of its entries is a new batch."""
    entry_ids: tuple[str, ...]


FaultPattern = Callable[[Call], Fault | None]
"""Call -> the fault to inject, or None to forward it as it is."""
EntryFault = Callable[[dict[str, Any], int], tuple[str, bool] | None]
"""(entry, attempt number for its Id, from 1) -> (error code, sender fault) or None to pass."""
RequestFault = Callable[[str, int], int | None]
"""(action, call number for that action, from 1) -> HTTP status to answer with, or None."""
Hook = Callable[[Call, str], None]
"""(call, "received" or "forwarded") -> None, run on the request's thread."""


def draw(seed: int, *parts: object) -> float:
    """A number in [0, 1) fixed by the seed and the parts, the same in every process."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _pick(rates: Mapping[Any, float], value: float) -> Any:
    total = 0.0
    for choice, rate in rates.items():
        total += rate
        if value < total:
            return choice
    return None


def random_faults(
    seed: int,
    rates: Mapping[Fault, float],
    *,
    actions: Collection[str] = ("SendMessageBatch",),
    attempts: int | None = None,
) -> FaultPattern:
    """Each call of `actions` gets one of `rates`' faults with its probability (sum <= 1).

    The draw depends on the seed, the call's entry ids and its attempt only, so the same batch
    gets the same faults whatever the order of calls. With `attempts`, attempts after that many
    are never faulted: a client with more attempts than that gets every batch through.
    """

    def pattern(call: Call) -> Fault | None:
        if call.action not in actions or (attempts is not None and call.attempt > attempts):
            return None
        key = call.entry_ids or (call.number,)
        return _pick(rates, draw(seed, call.action, key, call.attempt))

    return pattern


def outage(
    faults: Sequence[Fault],
    *,
    after_calls: int = 0,
    actions: Collection[str] = ("SendMessageBatch",),
) -> FaultPattern:
    """Every call of `actions` after the first `after_calls` fails: `faults` in turn by attempt."""

    def pattern(call: Call) -> Fault | None:
        if call.action not in actions or call.number <= after_calls:
            return None
        return faults[(call.attempt - 1) % len(faults)]

    return pattern


def random_entry_faults(
    seed: int,
    rates: Mapping[tuple[str, bool], float],
    *,
    attempts: int | None = None,
    content_codes: Collection[str] = (),
) -> EntryFault:
    """Entries fail with one of `rates`' (code, sender fault) with its probability.

    Codes in `content_codes` are about the entry itself (`InvalidParameterValue`, say): an entry
    draws them once and gets them at every attempt, as SQS validates a resend the same way.
    The other codes are drawn again at each attempt; with `attempts`, only that many first
    attempts can fail. Draws are seeded by the entry's Id (and attempt), so a test can tell in
    advance which entries fail.
    """
    content = {key: rate for key, rate in rates.items() if key[0] in content_codes}
    passing = {key: rate for key, rate in rates.items() if key[0] not in content_codes}

    def fault(entry: dict[str, Any], attempt: int) -> tuple[str, bool] | None:
        if fixed := _pick(content, draw(seed, "content", entry["Id"])):
            return fixed
        if attempts is not None and attempt > attempts:
            return None
        return _pick(passing, draw(seed, "entry", entry["Id"], attempt))

    return fault


class FaultProxy:
    """Forwards to `upstream`, injecting the faults it is given; use as a context manager.

    Args:
        upstream: moto's server URL.
        entry_fault: Fails entries of SendMessageBatch calls.
        request_fault: Answers whole calls with an HTTP status (the original, simple form).
        delay_seconds: Latency added to every call before it is forwarded.
        fault: Faults whole calls (see `Fault`); may be replaced while the proxy runs.
        hook: Called on each request when it arrives and once moto has answered it.
        hold_seconds: How long a timeout fault holds the connection; longer than the client's
            read timeout.
        sqs_deduplication_ids: Deduplicate FIFO sends as SQS does (see the module docstring).
        omit_entry: Leaves the entries whose Id it names out of a 200 answer, neither Successful
            nor Failed (moto stored them): an answer SQS should never give.
    """

    def __init__(
        self,
        upstream: str,
        entry_fault: EntryFault | None = None,
        request_fault: RequestFault | None = None,
        delay_seconds: float = 0.0,
        *,
        fault: FaultPattern | None = None,
        hook: Hook | None = None,
        hold_seconds: float = 2.0,
        sqs_deduplication_ids: bool = True,
        omit_entry: Callable[[str], bool] | None = None,
    ) -> None:
        self.upstream = urlsplit(upstream)
        self.entry_fault = entry_fault
        self.request_fault = request_fault
        self.delay_seconds = delay_seconds
        self.fault = fault
        self.hook = hook
        self.hold_seconds = hold_seconds
        self.sqs_deduplication_ids = sqs_deduplication_ids
        self.omit_entry = omit_entry
        self.omitted_entries = 0
        self.entry_attempts: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.forwarded: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.injected_entry_faults = 0
        self.unanswered_entries = 0
        self.deduplicated_entries = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._attempts: Counter[tuple[str, tuple[str, ...], str]] = Counter()
        self._first_messages: dict[tuple[str, str | None], tuple[dict[str, Any], float]] = {}
        self._lock = threading.Lock()
        self._fifo_lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no request is being handled (forwarded ones have reached moto)."""
        with self._idle:
            if not self._idle.wait_for(lambda: self.in_flight == 0, timeout):
                raise TimeoutError(f"{self.in_flight} requests still in the proxy after {timeout}s")

    def summary(self) -> dict[str, Any]:
        """What was injected and how often, for a report."""
        with self._lock:
            return {
                "calls": dict(self.calls),
                "forwarded": dict(self.forwarded),
                "injected": dict(self.injected),
                "unanswered_entries": self.unanswered_entries,
                "deduplicated_entries": self.deduplicated_entries,
                "max_in_flight": self.max_in_flight,
            }

    def _count(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.injected[kind] += n

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple:
        connection = http.client.HTTPConnection(
            self.upstream.hostname or "127.0.0.1", self.upstream.port, timeout=30
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
            self._count(f"entry {code} ({'sender' if sender_fault else 'server'} fault)")
            failed.append(
                {
                    "Id": entry["Id"],
                    "SenderFault": sender_fault,
                    "Code": code,
                    "Message": INJECTED_MESSAGE,
                }
            )
        with self._lock:
            self.injected_entry_faults += len(failed)
        request["Entries"] = kept
        return json.dumps(request).encode(), failed, len(kept)

    def _deduplicate(self, body: bytes) -> tuple[bytes, list[dict[str, Any]]]:
        """Take out FIFO entries SQS would drop as duplicates; answer them with the first ids."""
        request = json.loads(body)
        queue_url = request["QueueUrl"]
        now = time.monotonic()
        kept, answered = [], []
        with self._lock:
            for entry in request.get("Entries", []):
                first = self._first_messages.get((queue_url, entry.get("MessageDeduplicationId")))
                if first is None or now - first[1] >= DEDUPLICATION_SECONDS:
                    kept.append(entry)
                    continue
                answered.append(first[0] | {"Id": entry["Id"]})
            self.deduplicated_entries += len(answered)
        request["Entries"] = kept
        return json.dumps(request).encode(), answered

    def _remember(self, body: bytes, reply: dict[str, Any]) -> None:
        """Note the messages a FIFO queue accepted, by deduplication id."""
        request = json.loads(body)
        queue_url = request["QueueUrl"]
        dedup_ids = {e["Id"]: e.get("MessageDeduplicationId") for e in request.get("Entries", [])}
        now = time.monotonic()
        with self._lock:
            for item in reply.get("Successful", []):
                if dedup_id := dedup_ids.get(item["Id"]):
                    self._first_messages[(queue_url, dedup_id)] = (item, now)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def _reply(self, status: int, body: bytes, content_type: str) -> bool:
                """Send the reply; False when the client is no longer there to read it."""
                if self._client_gone():
                    return False
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    return False
                return True

            def _error(self, status: int, code: str, side: str) -> None:
                error = {"__type": f"com.amazonaws.sqs#{code}", "message": INJECTED_MESSAGE}
                self.send_response(status)
                # SQS's JSON protocol names the query-protocol code and the fault's side here.
                self.send_header("x-amzn-query-error", f"{code};{side}")
                self.send_header("Content-Type", JSON_CONTENT_TYPE)
                body = json.dumps(error).encode()
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _client_gone(self) -> bool:
                # The client sends nothing after its request: readable now means closed.
                try:
                    readable, _, _ = select.select([self.connection], [], [], 0)
                    return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    return True

            def _drop(self, fault: Fault) -> None:
                if fault in (Fault.TIMEOUT, Fault.TIMEOUT_AFTER_FORWARD):
                    proxy._stopping.wait(proxy.hold_seconds)
                else:
                    # Linger 0: close() sends RST, the client sees "connection reset by peer".
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                self.close_connection = True
                self.connection.close()

            def _forward(self, body: bytes, action: str) -> tuple[int, bytes, str]:
                if action == "SendMessageBatch" and not json.loads(body).get("Entries"):
                    return 200, b"{}", JSON_CONTENT_TYPE  # every entry was answered here
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in {"host", "content-length"}
                }
                status, response_headers, response_body = proxy._forward(
                    "POST", self.path, headers, body
                )
                with proxy._lock:
                    proxy.forwarded[action] += 1
                content_type = dict(response_headers).get("Content-Type", JSON_CONTENT_TYPE)
                return status, response_body, content_type

            def do_POST(self) -> None:
                with proxy._lock:
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                try:
                    self._handle()
                finally:
                    with proxy._idle:
                        proxy.in_flight -= 1
                        proxy._idle.notify_all()

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                action = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
                request = json.loads(body) if body else {}
                entry_ids = tuple(e["Id"] for e in request.get("Entries", []))
                queue_url = request.get("QueueUrl", "")
                with proxy._lock:
                    proxy.calls[action] += 1
                    proxy._attempts[(action, entry_ids, queue_url)] += 1
                    attempt = proxy._attempts[(action, entry_ids, queue_url)]
                    call = Call(action, proxy.calls[action], attempt, entry_ids)
                if proxy.hook:
                    proxy.hook(call, "received")
                if proxy.delay_seconds:
                    time.sleep(proxy.delay_seconds)
                status = proxy.request_fault(action, call.number) if proxy.request_fault else None
                if status is not None:
                    proxy._count(f"http {status}")
                    self._error(status, "ServiceUnavailable", "Receiver")
                    return
                fault = proxy.fault(call) if proxy.fault else None
                if fault is not None:
                    proxy._count(fault.value)
                if fault in HTTP_ERRORS:
                    self._error(*HTTP_ERRORS[fault])
                    return
                if fault in (Fault.TIMEOUT, Fault.RESET):
                    self._drop(fault)
                    return
                failed: list[dict[str, Any]] = []
                deduplicated: list[dict[str, Any]] = []
                batch = action == "SendMessageBatch"
                if batch and proxy.entry_fault:
                    body, failed, _ = proxy._split_batch(body)
                fifo = batch and proxy.sqs_deduplication_ids and queue_url.endswith(".fifo")
                # One FIFO send at a time: a resend must see the first send's message id.
                with proxy._fifo_lock if fifo else contextlib.nullcontext():
                    if fifo:
                        body, deduplicated = proxy._deduplicate(body)
                    status, response_body, content_type = self._forward(body, action)
                    stored = 0
                    if batch and status == 200:
                        reply = json.loads(response_body)
                        stored = len(reply.get("Successful", []))
                        if fifo:
                            proxy._remember(body, reply)
                        reply["Successful"] = reply.get("Successful", []) + deduplicated
                        reply["Failed"] = reply.get("Failed", []) + failed
                        if proxy.omit_entry:
                            kept = [i for i in reply["Successful"] if not proxy.omit_entry(i["Id"])]
                            with proxy._lock:
                                proxy.omitted_entries += len(reply["Successful"]) - len(kept)
                            reply["Successful"] = kept
                        response_body = json.dumps(reply).encode()
                if proxy.hook:
                    proxy.hook(call, "forwarded")
                if fault is not None and fault.after_forward:
                    with proxy._lock:
                        proxy.unanswered_entries += stored
                    self._drop(fault)
                    return
                if not self._reply(status, response_body, content_type):
                    with proxy._lock:
                        proxy.unanswered_entries += stored
                    self.close_connection = True

        return Handler
