"""The two yardsticks the pipeline is compared with, each run as its own process.

- `seed-baseline`: the origin service's design, rewritten here to measure it. Recipients come from
  a plain SELECT, each payload is a dict passed to `json.dumps`, batches of ten go out one
  `send_message_batch` call at a time (boto3's default client), and every recipient gets its own
  UPDATE, committed per batch.
- `raw-ceiling`: `send_message_batch` with bodies built beforehand, no database, from N threads:
  the most this client machine gets out of boto3 against the endpoint.

Each prints one JSON line: recipients, queued, failed, wall_s, cpu_s, peak_rss_mb.

    python benchmarks/baselines.py seed-baseline --database-url URL --campaign-ids ID,... \
        --limits 3334,... [--endpoint URL --queue-url URL]
    python benchmarks/baselines.py raw-ceiling --endpoint URL --queue-url URL --messages N \
        --threads T [--max-seconds S]
"""

import argparse
import itertools
import json
import re
import resource
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import psycopg
from botocore.config import Config
from dataset import CAMPAIGNS, ORGANIZATION_ID, recipient
from psycopg.rows import dict_row
from sqs_endpoints import REGION

E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# Compact, as JavaScript's JSON.stringify in the origin service and the pipeline write it.
JSON_STYLE: dict[str, Any] = {"ensure_ascii": False, "separators": (",", ":")}
BODY_POOL = 6_000  # distinct pre-built bodies the raw ceiling cycles through


def build_payload(campaign: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's payload for one recipient, built field by field as the origin service did."""
    values = {"name": row["name"], "phone_number": row["phone_number"], **row["attributes"]}

    def fill(text: str) -> str:
        return PLACEHOLDER.sub(lambda match: str(values.get(match.group(1), "")), text)

    payload: dict[str, Any] = {
        "organizationId": campaign["organization_id"],
        "campaignId": campaign["id"],
        "campaignAudienceId": row["id"],
        "to": row["phone_number"],
    }
    kind = campaign["message_type"]
    if kind == "template":
        payload["templateName"] = campaign["template_name"]
        payload["templateLanguage"] = campaign["template_language"]
        payload["templateParameters"] = [
            {**parameter, "value": fill(parameter["value"])}
            for parameter in campaign["template_parameters"] or []
        ]
    elif kind == "text":
        payload["messageType"] = "text"
        payload["messageContent"] = fill(campaign["message_content"])
    else:
        payload["messageType"] = kind
        payload["mediaUrl"] = fill(campaign["media_url"])
        payload["caption"] = fill(campaign["caption"] or "")
    return payload


def _usage(counts: Mapping[str, int], wall: float) -> dict[str, Any]:
    """The run's counts with its wall time, CPU time and peak RSS (this process and children)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    return {
        **counts,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": round((own.ru_maxrss + children.ru_maxrss) / 1024),
    }


def _mark(cursor: psycopg.Cursor, audience_id: str, status: str, detail: str | None) -> None:
    """One recipient's outcome, one statement: the origin service's way."""
    if status == "ready_to_send":
        cursor.execute(
            "UPDATE campaign_audience SET status = %s, sqs_message_id = %s, updated_at = now() "
            "WHERE id = %s",
            (status, detail, audience_id),
        )
    else:
        cursor.execute(
            "UPDATE campaign_audience SET status = %s, failure_reason = %s, updated_at = now() "
            "WHERE id = %s",
            (status, detail, audience_id),
        )


def _send_or_pretend(
    client: Any, queue_url: str | None, entries: list[dict[str, str]]
) -> dict[str, Any]:
    if client is None:  # the null sink: every entry accepted, nothing sent
        return {"Successful": [{"Id": e["Id"], "MessageId": str(uuid.uuid4())} for e in entries]}
    return client.send_message_batch(QueueUrl=queue_url, Entries=entries)


def _send_batch(
    cursor: psycopg.Cursor,
    client: Any,
    queue_url: str | None,
    campaign: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
) -> tuple[int, int]:
    """Validate, build, send and record up to ten recipients; returns (queued, failed)."""
    entries: list[dict[str, str]] = []
    failed = 0
    for row in rows:
        if not row["phone_number"] or not E164.match(row["phone_number"]):
            _mark(cursor, row["id"], "failed", "invalid phone number")
            failed += 1
            continue
        body = json.dumps(build_payload(campaign, row), **JSON_STYLE)
        entries.append({"Id": row["id"], "MessageBody": body})
    if not entries:
        return 0, failed
    response = _send_or_pretend(client, queue_url, entries)
    for item in response.get("Successful", []):
        _mark(cursor, item["Id"], "ready_to_send", item["MessageId"])
    for item in response.get("Failed", []):
        _mark(cursor, item["Id"], "failed", f"{item.get('Code')}: {item.get('Message')}")
    return len(response.get("Successful", [])), failed + len(response.get("Failed", []))


def seed_baseline(
    database_url: str,
    campaign_ids: Sequence[str],
    limits: Sequence[int | None],
    client: Any,
    queue_url: str | None,
) -> dict[str, int]:
    """Process the campaigns (at most `limit` recipients each) the origin service's way."""
    queued = failed = 0
    with psycopg.connect(database_url, row_factory=dict_row) as connection:
        cursor = connection.cursor()
        for campaign_id, limit in zip(campaign_ids, limits, strict=True):
            campaign = cursor.execute(
                "SELECT * FROM campaigns WHERE id = %s", (campaign_id,)
            ).fetchone()
            assert campaign is not None, f"campaign {campaign_id} is missing"
            cursor.execute(
                "UPDATE campaigns SET status = 'ready_to_launch' WHERE id = %s", (campaign_id,)
            )
            connection.commit()
            rows = cursor.execute(
                "SELECT id, phone_number, name, attributes FROM campaign_audience "
                "WHERE campaign_id = %s AND status = 'pending' ORDER BY id LIMIT %s",
                (campaign_id, limit),
            ).fetchall()
            # SendMessageBatch takes at most 10 entries.
            for start in range(0, len(rows), 10):
                sent, rejected = _send_batch(
                    cursor, client, queue_url, campaign, rows[start : start + 10]
                )
                connection.commit()
                queued, failed = queued + sent, failed + rejected
    return {"recipients": queued + failed, "queued": queued, "failed": failed}


def sample_bodies(count: int) -> list[str]:
    """`count` valid payloads of the benchmark's campaigns, in the same mix and sizes."""
    campaigns = [
        {**campaign, "id": str(uuid.uuid4()), "organization_id": ORGANIZATION_ID}
        for campaign in CAMPAIGNS
    ]
    bodies: list[str] = []
    index = 0
    while len(bodies) < count:
        phone, name, attributes = recipient(index)
        row = {"id": str(uuid.uuid4()), "phone_number": phone, "name": name}
        if E164.match(phone):
            payload = build_payload(
                campaigns[index % len(campaigns)], row | {"attributes": attributes}
            )
            bodies.append(json.dumps(payload, **JSON_STYLE))
        index += 1
    return bodies


def raw_ceiling(
    client: Any,
    queue_url: str,
    bodies: Sequence[str],
    messages: int,
    threads: int,
    max_seconds: float | None,
) -> dict[str, int]:
    """Send `messages` of the pre-built `bodies` (cycled) in batches of ten from `threads` threads.

    With `max_seconds`, stops taking new batches after that long (a sample for the thread sweep).
    """
    batches = range(0, messages, 10)
    next_batch = itertools.count().__next__  # atomic under the GIL
    deadline = time.perf_counter() + max_seconds if max_seconds else float("inf")

    def worker() -> tuple[int, int]:
        queued = failed = 0
        while (index := next_batch()) < len(batches) and time.perf_counter() < deadline:
            first = batches[index]
            entries = [
                {"Id": str(n), "MessageBody": bodies[(first + n) % len(bodies)]}
                for n in range(min(10, messages - first))
            ]
            response = client.send_message_batch(QueueUrl=queue_url, Entries=entries)
            queued += len(response.get("Successful", []))
            failed += len(response.get("Failed", []))
        return queued, failed

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = [future.result() for future in [pool.submit(worker) for _ in range(threads)]]
    queued = sum(result[0] for result in results)
    failed = sum(result[1] for result in results)
    return {"recipients": queued + failed, "queued": queued, "failed": failed}


def _client(endpoint: str | None, config: Config | None = None) -> Any:
    if endpoint is None:
        return None
    return boto3.client("sqs", endpoint_url=endpoint, region_name=REGION, config=config)


def _timed(run: Callable[[], dict[str, int]]) -> dict[str, Any]:
    started = time.perf_counter()
    counts = run()
    return _usage(counts, time.perf_counter() - started)


def _run_seed_baseline(args: argparse.Namespace) -> dict[str, Any]:
    limits = [int(limit) or None for limit in args.limits.split(",")]
    # boto3's defaults, as the origin service used them.
    client = _client(args.endpoint)
    campaign_ids = args.campaign_ids.split(",")
    return _timed(
        lambda: seed_baseline(args.database_url, campaign_ids, limits, client, args.queue_url)
    )


def _run_raw_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    bodies = sample_bodies(min(BODY_POOL, args.messages))
    # One pooled connection per thread, or threads would queue for boto3's default 10.
    client = _client(args.endpoint, Config(max_pool_connections=max(10, args.threads)))
    result = _timed(
        lambda: raw_ceiling(
            client, args.queue_url, bodies, args.messages, args.threads, args.max_seconds
        )
    )
    mean_bytes = sum(len(body.encode()) for body in bodies) / len(bodies)
    return result | {"payload_bytes_mean": round(mean_bytes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    seed = commands.add_parser("seed-baseline")
    seed.add_argument("--database-url", required=True)
    seed.add_argument("--campaign-ids", required=True, help="comma-separated")
    seed.add_argument("--limits", required=True, help="recipients per campaign, 0: all")
    seed.add_argument("--endpoint", help="SQS endpoint; none: the null sink")
    seed.add_argument("--queue-url")
    raw = commands.add_parser("raw-ceiling")
    raw.add_argument("--endpoint", required=True)
    raw.add_argument("--queue-url", required=True)
    raw.add_argument("--messages", type=int, required=True)
    raw.add_argument("--threads", type=int, required=True)
    raw.add_argument("--max-seconds", type=float)
    args = parser.parse_args()
    run = _run_seed_baseline if args.command == "seed-baseline" else _run_raw_ceiling
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
