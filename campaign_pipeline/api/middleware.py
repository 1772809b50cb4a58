"""`BoundedRequests`: the ASGI middleware that bounds request bodies and logs each request once.

One log line per request: method, path, status, milliseconds, the token's name (never the token)
and the client's address; never the headers or the query.
"""

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from campaign_pipeline.api.error_handlers import error_response

logger = logging.getLogger("campaign_pipeline.api")

# Bodies here are a few flags; anything larger is refused before it is read further.
MAX_BODY_BYTES = 16 * 1024
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class BoundedRequests:
    """ASGI middleware: refuse bodies over `max_body_bytes` (413) and log each request once.

    The body is read here, whole, before the application sees it: bodies are a few flags, and
    a client announcing or streaming more is answered at once, not buffered.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Bound the body, pass the request on, log the answer."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered: list[int] = []

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered.append(message["status"])
            await send(message)

        try:
            body_receive = await self._bounded(scope, receive)
            if body_receive is None:
                response = error_response(
                    413, f"the request body is over {self.max_body_bytes} bytes"
                )
                await response(scope, receive, send_logged)
            else:
                await self.app(scope, body_receive, send_logged)
        finally:
            client = scope.get("client") or ("-", 0)
            logger.info(
                "%s %s %s %.1f ms token=%s client=%s",
                scope["method"],
                scope["path"],
                answered[0] if answered else "-",
                (time.perf_counter() - started) * 1000,
                scope.get("state", {}).get("token", "-"),
                client[0],
            )

    async def _bounded(self, scope: Scope, receive: Receive) -> Receive | None:
        """A `receive` that replays the body read here, or None when the body is too large."""
        if scope["method"] not in BODY_METHODS:
            return receive
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return receive
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        return replay
