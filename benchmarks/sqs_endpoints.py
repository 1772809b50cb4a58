"""The SQS endpoints the benchmark sends to: fauxqs on loopback, and fauxqs behind a latency proxy.

fauxqs (an npm SQS emulator) is installed under benchmarks/ on first use; 1.9.2 is the last
release that runs on Node.js 20 (2.x needs `node:sqlite`). Both servers are child processes on free
loopback ports, stopped when their context ends, whatever happened inside it.
"""

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3

BENCHMARKS = Path(__file__).resolve().parent
FAUXQS_VERSION = "1.9.2"
FAUXQS_PACKAGE = BENCHMARKS / "node_modules" / "fauxqs" / "package.json"
REGION = "us-east-1"
# Credentials for the local endpoints only; never real ones.
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "benchmark", "AWS_SECRET_ACCESS_KEY": "benchmark"}


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode} before listening")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not listen on port {port} within 30 s")
        time.sleep(0.05)


@contextlib.contextmanager
def _server(
    argv: Sequence[str],
    port: int,
    name: str,
    env: dict[str, str] | None = None,
    on_stop: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Run `argv` until the context ends, once it listens on `port`.

    stderr goes to a temporary file, not a pipe (a pipe nobody reads would block the server);
    `on_stop` gets it once the server has stopped.
    """
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=log, cwd=BENCHMARKS
        )

        def stderr() -> str:
            log.seek(0)
            return log.read().decode(errors="replace").strip()

        try:
            try:
                _wait_for_port(port, process, name)
            except (RuntimeError, TimeoutError) as error:
                raise RuntimeError(f"{error}\n{stderr()[-2000:]}") from None
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if on_stop is not None:
                on_stop(stderr())


def fauxqs_version() -> str | None:
    """The installed fauxqs version, or None."""
    if not FAUXQS_PACKAGE.exists():
        return None
    return json.loads(FAUXQS_PACKAGE.read_text())["version"]


def install_fauxqs() -> None:
    """Install the pinned fauxqs under benchmarks/node_modules unless it is there already.

    One installer at a time: processes starting together (pytest-xdist workers) wait here.
    """
    with open(BENCHMARKS / ".fauxqs-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if fauxqs_version() == FAUXQS_VERSION:
            return
        subprocess.run(
            ["npm", "install", "--no-save", "--no-audit", "--no-fund", f"fauxqs@{FAUXQS_VERSION}"],
            cwd=BENCHMARKS,
            check=True,
        )


@contextlib.contextmanager
def fauxqs_server() -> Iterator[str]:
    """Fauxqs on a free loopback port; yields its endpoint URL."""
    install_fauxqs()
    port = free_port()
    env = os.environ | {"FAUXQS_PORT": str(port), "FAUXQS_HOST": "127.0.0.1"}
    # The launcher binds loopback only and turns off per-request logging (see its comment).
    with _server(["node", str(BENCHMARKS / "fauxqs_loopback.mjs")], port, "fauxqs", env):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def latency_proxy(endpoint: str, latency_ms: float) -> Iterator[str]:
    """The latency proxy in front of `endpoint`; yields its own endpoint URL.

    When it stops, its stderr is printed: how many requests it relayed, which shows the slow runs
    really went through it.
    """
    port = free_port()
    upstream = endpoint.removeprefix("http://")
    argv = [sys.executable, str(BENCHMARKS / "latency_proxy.py"), "--port", str(port)]
    argv += ["--upstream", upstream, "--latency-ms", str(latency_ms)]
    with _server(argv, port, "latency proxy", on_stop=lambda log: print(log[-2000:])):
        yield f"http://127.0.0.1:{port}"


def admin_client(endpoint: str) -> Any:
    """A boto3 client for creating, inspecting and deleting benchmark queues."""
    return boto3.session.Session().client(
        "sqs",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


@contextlib.contextmanager
def fresh_queue(endpoint: str) -> Iterator[str]:
    """A new standard queue for one measurement, deleted afterwards; yields its URL."""
    client = admin_client(endpoint)
    queue_url = client.create_queue(QueueName=f"bench-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    try:
        yield queue_url
    finally:
        client.delete_queue(QueueUrl=queue_url)


def queue_depth(endpoint: str, queue_url: str) -> int:
    """Messages waiting in the queue, to check that what was reported queued really landed."""
    attributes = admin_client(endpoint).get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])
