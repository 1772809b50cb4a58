"""How closely a capped campaign keeps to its cap, over every 10-second window, against fauxqs.

For each cap of `--caps` (messages per second), one campaign of `cap * --seconds` recipients
(benchmarks/database.py's `seed`, one campaign, 1% invalid phone numbers) in a throwaway
PostgreSQL database, sent by `sending.shard.ShardSend(...).run()` with `max_messages_per_second`
set to the cap, the op's default chunk, write window and lease (`CampaignConfig`) and the
queue's default concurrency (the `sqs.SqsBatchQueue` the `SqsQueue` resource would make, over
its boto3 client wrapped to time each call: `TimedClient`), to fauxqs on loopback
(benchmarks/sqs_endpoints.py). First, in the same run, a campaign of `--uncapped-recipients` is
sent without a cap: the baseline, what this machine reaches uncapped, so a cap above it is
reported as one that cannot bind.

Each SendMessageBatch that SQS accepted entries of is timed as it returns (around the boto3
client's `send_message_batch`, botocore's retries included; a resend of entries SQS failed is a
call of its own). From those times, per run:

- `mean`: messages per second from the first batch answered one second or more after the first
  batch to the last batch;
- `min_10s`, `max_10s`: the lowest and highest rate over every 10-second window that starts one
  second or more after the first accepted batch and ends by the last one (slid by 0.1 s);
- `max_deviation_pct`: the largest distance of a window's rate from the cap, in % of the cap;
- `ratio`: `mean` / cap; `cap_vs_uncapped`: the cap / the uncapped mean, and
  `cap_vs_slowest_uncapped_10s`: the cap / the uncapped run's slowest 10-s window (above 1 the
  machine itself fell below the cap at times, so the cap cannot hold every window).

Then it checks that every recipient has an outcome (`ready_to_send` or, for the invalid phone
numbers, `failed`), that the queue holds as many messages as were queued, and that no
SendMessageBatch call was accepted in part. Prints one JSON line; exits with status 1 after
printing if a check failed.

    .venv/bin/python benchmarks/rate_cap.py [--caps 50 500 5000] [--seconds 30]
"""

import argparse
import bisect
import contextlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from database import reset, seed, temporary_database
from sqs_endpoints import FAKE_CREDENTIALS, REGION, fauxqs_server, fauxqs_version, fresh_queue

from campaign_pipeline.defs.ops.config import CampaignConfig
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import DEFAULT_MAX_CONCURRENT_BATCHES, SqsQueue
from campaign_pipeline.sending.lease import Lease
from campaign_pipeline.sending.pacing import BURST_SECONDS
from campaign_pipeline.sending.shard import ShardSend

WINDOW_S = 10.0
SKIP_FIRST_S = 1.0
SLIDE_S = 0.1
TOLERANCE_PCT = 5.0
QUEUE_SETTLE_S = 5


@dataclass
class Accepted:
    """When each accepted SendMessageBatch call answered, and how many entries SQS accepted."""

    times: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # entries sent, to check batches stay whole
    lock: threading.Lock = field(default_factory=threading.Lock)


class TimedClient:
    """A boto3 SQS client timing each SendMessageBatch call that SQS accepted entries of."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.accepted = Accepted()

    def get_queue_attributes(self, **arguments: Any) -> Any:
        """The client's GetQueueAttributes."""
        return self.client.get_queue_attributes(**arguments)

    def send_message_batch(self, **arguments: Any) -> Any:
        """The client's call, noting when it answered and what SQS accepted."""
        response = self.client.send_message_batch(**arguments)
        answered = time.perf_counter()
        if accepted := len(response.get("Successful", [])):
            with self.accepted.lock:
                self.accepted.times.append(answered)
                self.accepted.counts.append(accepted)
                self.accepted.sizes.append(len(arguments["Entries"]))
        return response


def _config_default(name: str) -> Any:
    return CampaignConfig.model_fields[name].default


def window_rates(times: Sequence[float], counts: Sequence[int]) -> list[float]:
    """Messages per second in each WINDOW_S window from SKIP_FIRST_S after the first batch."""
    order = sorted(range(len(times)), key=times.__getitem__)
    times = [times[i] for i in order]
    totals = [0]
    for i in order:
        totals.append(totals[-1] + counts[i])
    rates = []
    start = times[0] + SKIP_FIRST_S
    while start + WINDOW_S <= times[-1]:
        first = bisect.bisect_left(times, start)
        last = bisect.bisect_left(times, start + WINDOW_S)
        rates.append((totals[last] - totals[first]) / WINDOW_S)
        start += SLIDE_S
    return rates


def _summary(accepted: Accepted, cap: float | None) -> dict[str, Any]:
    times, counts = accepted.times, accepted.counts
    first, last = min(times), max(times)
    # From the first batch answered a second or more in to the last: the messages after it,
    # over the time between them.
    start = min((t for t in times if t >= first + SKIP_FIRST_S), default=first)
    after = sum(c for t, c in zip(times, counts, strict=True) if t > start)
    mean = after / (last - start) if last > start else 0.0
    rates = window_rates(times, counts)
    summary: dict[str, Any] = {
        "cap": cap,
        "accepted": sum(counts),
        "seconds": round(last - first, 2),
        "mean": round(mean, 1),
        "windows": len(rates),
        "min_10s": round(min(rates), 1) if rates else None,
        "max_10s": round(max(rates), 1) if rates else None,
    }
    if cap is not None and rates:
        deviation = max(abs(rate - cap) for rate in rates) / cap * 100
        summary |= {
            "max_deviation_pct": round(deviation, 2),
            "within_5pct": deviation <= TOLERANCE_PCT,
            "ratio": round(mean / cap, 4),
        }
    return summary


def _outcomes(database_url: str, campaign_id: str) -> dict[str, int]:
    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            "SELECT status, count(*) FROM campaign_audience WHERE campaign_id = %s GROUP BY status",
            (campaign_id,),
        ).fetchall()
    return {status: count for status, count in rows}


def _queue_messages(client: Any, queue_url: str, expected: int) -> int:
    deadline = time.monotonic() + QUEUE_SETTLE_S
    while True:
        depth = int(
            client.get_queue_attributes(
                QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]["ApproximateNumberOfMessages"]
        )
        if depth == expected or time.monotonic() > deadline:
            return depth
        time.sleep(0.2)


def measure(
    database_url: str, campaign_id: str, recipients: int, endpoint: str, cap: float | None
) -> dict[str, Any]:
    """One send of the campaign at `cap` (None: uncapped): its windows and its checks."""
    reset(database_url, [campaign_id])
    store = CampaignStore(database_url=database_url)
    run_id = f"rate-cap-{uuid.uuid4().hex[:12]}"
    lease_seconds = _config_default("lease_seconds")
    with fresh_queue(endpoint) as queue_url:
        resource = SqsQueue(queue_url=queue_url, region_name=REGION, endpoint_url=endpoint)
        client = TimedClient(resource.client)
        claim = store.claims.claim(campaign_id, run_id, lease_seconds)
        stats = ShardSend(
            claim.message,
            Lease(store.claims, campaign_id, run_id, lease_seconds),
            store.audience,
            resource.batch_queue(client),
            store.suppressions,
            recipients_per_chunk=_config_default("recipients_per_chunk"),
            outcomes_per_write=_config_default("outcomes_per_write"),
            max_messages_per_second=cap,
        ).run()
        outcomes = _outcomes(database_url, campaign_id)
        depth = _queue_messages(resource.client, queue_url, outcomes.get("ready_to_send", 0))
    store.engine.dispose()
    accepted = client.accepted
    queued = outcomes.get("ready_to_send", 0)
    checks = {
        "every_recipient_has_an_outcome": queued + outcomes.get("failed", 0) == recipients,
        "queue_holds_what_was_queued": depth == queued == sum(accepted.counts),
        "batches_whole": all(
            size == count for size, count in zip(accepted.sizes, accepted.counts, strict=True)
        ),
        "not_stopped": stats.stopped is None,
    }
    return {
        **_summary(accepted, cap),
        "recipients": recipients,
        "batches": len(accepted.counts),
        "checks_failed": [name for name, passed in checks.items() if not passed],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caps", type=float, nargs="+", default=[50.0, 500.0, 5_000.0])
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="sending time each cap is given"
    )
    parser.add_argument(
        "--uncapped-recipients",
        type=int,
        default=150_000,
        help="the uncapped baseline's campaign (long enough for several 10-s windows)",
    )
    args = parser.parse_args()
    # boto3's default chain must find the local endpoints' fake credentials, never real ones.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS"):
        os.environ.pop(name, None)
    os.environ.update(FAKE_CREDENTIALS)

    caps = sorted(args.caps)
    runs = []
    with contextlib.ExitStack() as stack:
        # stdout is for the JSON line.
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        database_url = stack.enter_context(temporary_database())
        sizes = {cap: round(cap * args.seconds) for cap in caps}
        campaigns = {
            size: seed(database_url, size, campaigns=1).campaign_ids[0]
            for size in {*sizes.values(), args.uncapped_recipients}
        }
        endpoint = stack.enter_context(fauxqs_server())
        uncapped = measure(
            database_url,
            campaigns[args.uncapped_recipients],
            args.uncapped_recipients,
            endpoint,
            None,
        )
        print(f"uncapped: {uncapped}", file=sys.stderr, flush=True)
        for cap in caps:
            run = measure(database_url, campaigns[sizes[cap]], sizes[cap], endpoint, cap)
            run["cap_vs_uncapped"] = round(cap / uncapped["mean"], 3)
            run["cap_binds"] = cap < uncapped["mean"]
            # Above the slowest uncapped window, the machine itself fell below the cap at times.
            if uncapped["min_10s"]:
                run["cap_vs_slowest_uncapped_10s"] = round(cap / uncapped["min_10s"], 3)
            print(f"cap {cap:g}: {run}", file=sys.stderr, flush=True)
            runs.append(run)
    failed = sorted({name for run in [uncapped, *runs] for name in run["checks_failed"]})
    print(
        json.dumps(
            {
                "sink": f"fauxqs {fauxqs_version()} (loopback)",
                "seconds_per_cap": args.seconds,
                "window_s": WINDOW_S,
                "skip_first_s": SKIP_FIRST_S,
                "slide_s": SLIDE_S,
                "burst_s": BURST_SECONDS,
                "max_concurrent_batches": DEFAULT_MAX_CONCURRENT_BATCHES,
                "uncapped": uncapped,
                "caps": runs,
                "checks_failed": failed,
            }
        )
    )
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
