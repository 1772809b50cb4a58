"""An HTTP/1.1 proxy on loopback that holds every request for a fixed time before forwarding it.

fauxqs answers in about a millisecond; real SQS is a network round trip away. Putting this in
front of fauxqs shows what a design does when each call waits (sequential sends stall, concurrent
ones overlap the waits). Each client connection gets its own upstream connection, kept alive as
long as the client keeps its own; requests are read whole (head and Content-Length or chunked
body), delayed, forwarded, and the response relayed back.

    python benchmarks/latency_proxy.py --port 8081 --upstream 127.0.0.1:8080 --latency-ms 20
"""

import argparse
import asyncio
import signal
import sys
from dataclasses import dataclass

# Responses to these statuses never have a body (RFC 9112, section 6.3).
BODILESS_STATUSES = (b"1", b"204", b"304")


@dataclass
class Stats:
    """What the proxy relayed, reported when it stops."""

    requests: int = 0
    connections: int = 0


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    pairs = (line.split(":", 1) for line in lines if ":" in line)
    return {name.strip().lower(): value.strip() for name, value in pairs}


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        parts.append(size_line)
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            break
        parts.append(await reader.readexactly(size + 2))  # the chunk and its CRLF
    while True:  # trailers, up to the empty line
        line = await reader.readuntil(b"\r\n")
        parts.append(line)
        if line == b"\r\n":
            return b"".join(parts)


async def read_message(
    reader: asyncio.StreamReader, is_response: bool
) -> tuple[bytes, bool] | None:
    """One whole HTTP/1.1 message and whether its connection stays open; None at a clean EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial:
            raise ConnectionError("connection closed in the middle of a message") from None
        return None
    headers = _headers(head)
    # HTTP/1.1 keeps the connection open unless told otherwise; HTTP/1.0 is closed here.
    keep_alive = b"HTTP/1.1" in head.split(b"\r\n", 1)[0]
    keep_alive = keep_alive and headers.get("connection", "").lower() != "close"
    status = head.split(b" ", 2)[1] if is_response else b""
    if is_response and status.startswith(BODILESS_STATUSES):
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif is_response:
        body = await reader.read()  # delimited by the end of the connection
        keep_alive = False
    else:
        body = b""
    return head + body, keep_alive


async def _relay(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream: tuple[str, int],
    latency_s: float,
    stats: Stats,
) -> None:
    """Serve one client connection through its own upstream connection."""
    stats.connections += 1
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(*upstream)
    except OSError:
        client_writer.close()
        return
    try:
        while request := await read_message(client_reader, is_response=False):
            await asyncio.sleep(latency_s)
            upstream_writer.write(request[0])
            await upstream_writer.drain()
            response = await read_message(upstream_reader, is_response=True)
            if response is None:
                break
            client_writer.write(response[0])
            await client_writer.drain()
            stats.requests += 1
            if not (request[1] and response[1]):
                break
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # either side went away; closing both ends is all there is to do
    finally:
        for writer in (client_writer, upstream_writer):
            writer.close()


async def serve(port: int, upstream: tuple[str, int], latency_s: float) -> None:
    """Proxy 127.0.0.1:`port` to `upstream` until SIGTERM or SIGINT."""
    stats = Stats()
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await _relay(reader, writer, upstream, latency_s, stats)
        except asyncio.CancelledError:
            # Stopping. Python 3.11's stream callback raises on a cancelled handler, so the
            # handler ends normally instead.
            writer.close()
        finally:
            handlers.discard(task)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    await stop.wait()
    server.close()
    for task in list(handlers):
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    print(
        f"latency proxy: {stats.requests} requests over {stats.connections} connections",
        file=sys.stderr,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port to listen on (loopback)")
    parser.add_argument("--upstream", required=True, help="host:port to forward to")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost"):
        parser.error("the upstream must be on loopback")
    asyncio.run(serve(args.port, (host, int(port)), args.latency_ms / 1000))


if __name__ == "__main__":
    main()
