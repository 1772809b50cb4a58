"""Sample campaigns and a local SQS server, for `campaign-pipeline demo`.

The sample audiences use fictional numbers (the +1 555 01xx and +44 7700 900xxx ranges) and
include a few recipients that must fail, so the demo shows both outcomes.
"""

import contextlib
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from campaign_pipeline.errors import DemoUnavailable
from campaign_pipeline.resources.campaign_store import CampaignStore

DEMO_ORGANIZATION_ID = "0d3a5c8e-5b1f-4c2e-9f4a-6e2d1b7c9a10"
DEMO_QUEUE_NAME = "whatsapp-messages.fifo"


def _recipient(phone: str, name: str | None, **attributes: str) -> dict[str, Any]:
    return {"phone_number": phone, "name": name, "attributes": attributes or None}


# Each campaign: its columns, then its audience. The comments name the recipients meant to fail.
DEMO_CAMPAIGNS: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
    (
        {
            "name": "Spring hello",
            "message_type": "template",
            "template_name": "hello_world",
            "template_language": "en",
            "template_parameters": [],
        },
        [
            _recipient("+15550100001", "Ada"),
            _recipient("+15550100002", "Grace"),
            _recipient("+15550100003", "Linus"),
            _recipient("+447700900101", "Alan"),
            _recipient("+447700900102", "Barbara"),
            _recipient("15550100004", "Ken"),  # no '+'
        ],
    ),
    (
        {
            "name": "Store welcome",
            "message_type": "template",
            "template_name": "welcome_message",
            "template_language": "en",
            "template_parameters": [
                {"type": "header", "valueType": "text", "value": "Welcome!"},
                {"type": "body", "valueType": "text", "value": "{{name}}"},
                {"type": "body", "valueType": "text", "value": "our {{city}} store"},
            ],
        },
        [
            _recipient("+15550100011", "John Doe", city="Austin"),
            _recipient("+15550100012", "Mary Major", city="Denver"),
            _recipient("+447700900111", "Sam Smith", city="Leeds"),
            _recipient("+447700900112", "Priya Patel", city="London"),
            _recipient("+15550100013", "Luis Garcia", city="Miami"),
            _recipient("+15550100014", "Chen Wei"),  # no city for {{city}}
            _recipient("+15550100015", None, city="Boston"),  # no name for {{name}}
        ],
    ),
    (
        {
            "name": "Order shipped",
            "message_type": "text",
            "message_content": "Hello {{name}}! Your order {{order_id}} ships today.",
        },
        [
            _recipient("+15550100021", "Ada", order_id="A-1001"),
            _recipient("+15550100022", "Grace", order_id="A-1002"),
            _recipient("+447700900121", "Alan", order_id="A-1003"),
            _recipient("+447700900122", "Barbara", order_id="A-1004"),
            _recipient("+1555-010-0023", "Ken", order_id="A-1005"),  # dashes
            _recipient("+15550100024", "Linus", order_id="A-1006"),
        ],
    ),
    (
        {
            "name": "Summer offer",
            "message_type": "image",
            "media_url": "https://cdn.example.com/images/summer-offer.jpg",
            "caption": "Special offer just for you, {{name}}!",
        },
        [
            _recipient("+15550100031", "Ada"),
            _recipient("+15550100032", "Grace"),
            _recipient("+447700900131", "Alan"),
            _recipient("+447700900132", "Barbara"),
            _recipient("+1555", "Ken"),  # too short
        ],
    ),
    (
        {
            "name": "Product tour",
            "message_type": "video",
            "media_url": "https://cdn.example.com/videos/tour-{{plan}}.mp4",
            "caption": "Your {{plan}} plan in two minutes",
        },
        [
            _recipient("+15550100041", "Ada", plan="basic"),
            _recipient("+15550100042", "Grace", plan="pro"),
            _recipient("+447700900141", "Alan", plan="pro"),
            _recipient("+447700900142", "Barbara", plan="team"),
            _recipient("+15550100043", "Ken"),  # no plan for {{plan}}
        ],
    ),
    (
        {
            "name": "Price list",
            "message_type": "document",
            "media_url": "{{price_list_url}}",
            "caption": "Prices for {{name}}",
        },
        [
            _recipient(
                "+15550100051", "Ada", price_list_url="https://files.example.com/prices-us.pdf"
            ),
            _recipient(
                "+15550100052", "Grace", price_list_url="https://files.example.com/prices-us.pdf"
            ),
            _recipient(
                "+447700900151", "Alan", price_list_url="https://files.example.com/prices-uk.pdf"
            ),
            _recipient(
                "+447700900152",
                "Barbara",
                price_list_url="ftp://files.example.com/prices-uk.pdf",  # not http(s)
            ),
            _recipient(
                "+15550100053", "Linus", price_list_url="https://files.example.com/prices-us.pdf"
            ),
        ],
    ),
    (
        {
            "name": "Jingle",
            "message_type": "audio",
            "media_url": "https://cdn.example.com/audio/jingle.mp3",
            "caption": "",
        },
        [
            _recipient("+15550100061", "Ada"),
            _recipient("+15550100062", "Grace"),
            _recipient("+447700900161", "Alan"),
            _recipient("+447700900162", "Barbara"),
            _recipient("+05550100063", "Ken"),  # starts with 0 after '+'
        ],
    ),
]


def seed_demo_campaigns(store: CampaignStore) -> list[str]:
    """Add the sample campaigns, all `asset_generated`, to `store`; returns their ids in order."""
    ids = []
    for campaign, audience in DEMO_CAMPAIGNS:
        campaign_id = store.campaigns.add(
            organization_id=DEMO_ORGANIZATION_ID, status="asset_generated", **campaign
        )
        store.campaigns.add_recipients(campaign_id, audience)
        ids.append(campaign_id)
    return ids


def _only_demo_campaigns(path: Path) -> bool:
    """Whether the SQLite file at `path` holds nothing but campaigns this demo seeded."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            others = db.execute(
                "SELECT count(*) FROM campaigns WHERE organization_id != ?",
                (DEMO_ORGANIZATION_ID,),
            ).fetchone()[0]
    except sqlite3.Error:
        return path.stat().st_size == 0
    return others == 0


def reset_demo_database(path: Path) -> None:
    """Delete the demo's SQLite file (and its WAL files), refusing one with other campaigns."""
    if path.exists() and not _only_demo_campaigns(path):
        raise DemoUnavailable(
            f"refusing to delete {path}: it holds campaigns the demo did not create; "
            "move it away or point DAGSTER_HOME elsewhere"
        )
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on `host:port`."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    """Terminate `process` and wait for it; kill it if it outlives `timeout` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def local_sqs_server(log_path: Path | None = None, timeout: float = 30) -> Iterator[str]:
    """Run moto's server on a free loopback port; yields its endpoint URL.

    The server runs in its own session, so a Ctrl-C in the terminal reaches the process that
    started it, which stops it after whatever still talks to it.
    """
    port = free_port()
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(log_path.open("ab")) if log_path else subprocess.DEVNULL
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        stack.callback(stop_process, process)
        deadline = time.monotonic() + timeout
        while not port_is_open(port):
            if process.poll() is not None:
                raise DemoUnavailable(
                    f"moto's server exited with status {process.returncode}"
                    + (f"; see {log_path}" if log_path else "")
                )
            if time.monotonic() > deadline:
                raise DemoUnavailable(
                    f"moto's server did not listen on port {port} within {timeout}s"
                )
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
