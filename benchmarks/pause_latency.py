"""How long a paused campaign keeps sending: from `store.control.apply(id, "pause")` to its end.

One campaign of `--recipients` recipients (benchmarks/database.py's `seed`, one campaign) in a
throwaway PostgreSQL database; fauxqs on loopback (benchmarks/sqs_endpoints.py), optionally
behind the latency proxy (`--latency-ms`). Each repeat resets the recipients to `pending`, makes a
fresh queue, claims the campaign and runs `sending.shard.ShardSend(...).run()` in a thread with
the op's default chunk, write window and lease (`CampaignConfig`) and the queue's default
concurrency (`SqsQueue.max_concurrent_batches`), to the `sqs.SqsBatchQueue` the `SqsQueue`
resource would make, over its boto3 client wrapped to time each call (`TimedClient`). Once SQS
has accepted a first batch it lets the run send for `--send-seconds`, pauses the campaign and
measures, from the moment `control.apply` is called:

- `pause_to_return_s`: until `ShardSend.run` returned;
- `pause_to_last_accepted_s`: until the last SendMessageBatch response with an accepted entry
  (timed around the boto3 client's `send_message_batch`, which returns as the HTTP response is
  parsed; a resend of entries SQS failed is a call of its own);
- `pause_to_last_batch_started_s`: until the last SendMessageBatch call began (the run may start
  new calls until it sees the pause: the campaign-status poll every `STATUS_POLL_SECONDS` or an
  outcome write's answer, heeded as soon as that write ends);
- `poll_saw_pause_s` and `write_saw_pause_s`: until the status poll (the lease's
  `claims.status`, `WatchedClaims`), and an outcome write (`audience.record_outcomes`,
  `WatchedAudience`), first returned `paused`.

The pause comes from another process, as an operator's `campaign-pipeline pause` would (its
store connected beforehand; `time.perf_counter` is the system's monotonic clock, the same in both
processes). With `--pause-in-process` it comes from the benchmark's own process instead, where
the call competes for the GIL with the run's 64 sending threads.

Then it checks that the run stopped for the pause and nothing was lost: every recipient is
`ready_to_send` with a message id, `pending` without one, or `failed` for its invalid phone number
(the data set has 1%); the `ready_to_send` message ids are exactly the ones SQS accepted; the
queue holds that many messages; the campaign is `paused` with live counts matching its
recipients. Prints one JSON line: min, median and max of each measure over the repeats, and each
repeat's details; exits with status 1 after printing if a check failed.

    .venv/bin/python benchmarks/pause_latency.py [--recipients 200000] [--repeats 3]
        [--send-seconds 3] [--latency-ms 0] [--pause-in-process]
"""

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import polars as pl
import psycopg
from database import reset, seed, temporary_database
from sqs_endpoints import (
    FAKE_CREDENTIALS,
    REGION,
    admin_client,
    fauxqs_server,
    fauxqs_version,
    fresh_queue,
    latency_proxy,
)

from campaign_pipeline.defs.ops.config import CampaignConfig
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import DEFAULT_MAX_CONCURRENT_BATCHES, SqsQueue
from campaign_pipeline.sending.lease import STATUS_POLL_SECONDS, Lease
from campaign_pipeline.sending.shard import ShardSend
from campaign_pipeline.sending.stats import SendStats
from campaign_pipeline.store.audience import Audience
from campaign_pipeline.store.claims import Claims
from campaign_pipeline.store.records import Claim, IdRange, Outcomes, WriteAck

ACTOR = "benchmarks/pause_latency.py"
FIRST_BATCH_TIMEOUT_S = 60
RUN_TIMEOUT_S = 600
QUEUE_SETTLE_S = 5  # how long to wait for the queue's approximate count to reach the expected one


@dataclass
class Calls:
    """Every SendMessageBatch of a run: when each began and answered, and what SQS accepted."""

    started: list[float] = field(default_factory=list)
    accepted_at: list[float] = field(default_factory=list)  # answers with an accepted entry
    message_ids: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class TimedClient:
    """A boto3 SQS client timing each SendMessageBatch call (botocore's retries included)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls = Calls()

    def get_queue_attributes(self, **arguments: Any) -> Any:
        """The client's GetQueueAttributes."""
        return self.client.get_queue_attributes(**arguments)

    def send_message_batch(self, **arguments: Any) -> Any:
        """The client's call, noting when it began and, if SQS accepted any, when it answered."""
        with self.calls.lock:
            self.calls.started.append(time.perf_counter())
        response = self.client.send_message_batch(**arguments)
        answered = time.perf_counter()
        if successful := response.get("Successful", []):
            with self.calls.lock:
                self.calls.accepted_at.append(answered)
                self.calls.message_ids += [item["MessageId"] for item in successful]
        return response


# When `control` was called and returned (perf_counter seconds), and whether it paused.
Pause = tuple[float, float, bool]


def _pause(store: CampaignStore, campaign_id: str) -> Pause:
    started = time.perf_counter()
    changed = store.control.apply(campaign_id, "pause", ACTOR).changed
    return started, time.perf_counter(), changed


def _pauser(database_url: str, campaign_id: str, connection: Connection) -> None:
    """In a process of its own: pause the campaign each time it is told to."""
    store = CampaignStore(database_url=database_url)
    store.claims.status(campaign_id)  # connected before it is told, not after
    connection.send("ready")
    while connection.recv() == "pause":
        connection.send(_pause(store, campaign_id))
    store.engine.dispose()


@contextlib.contextmanager
def pauser_process(database_url: str, campaign_id: str) -> Iterator[Callable[[], Pause]]:
    """A process that pauses the campaign on request; yields the function that asks it."""
    ours, theirs = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=_pauser, args=(database_url, campaign_id, theirs), daemon=True
    )
    process.start()
    try:
        if ours.recv() != "ready":
            raise RuntimeError("the pausing process did not start")

        def pause() -> Pause:
            ours.send("pause")
            return ours.recv()

        yield pause
    finally:
        ours.send("stop")
        process.join(timeout=10)
        if process.is_alive():
            process.kill()


# When the status poll ("poll") and an outcome write ("write") first saw `paused`.
SawPause = dict[str, float]


class WatchedClaims:
    """The store's claims for the run's `Lease`; its status poll notes when it first saw a pause."""

    def __init__(self, claims: Claims, saw_pause: SawPause) -> None:
        self.claims = claims
        self.saw_pause = saw_pause

    def claim(
        self,
        campaign_id: str,
        run_id: str,
        lease_seconds: float,
        take_over_from: str | None = None,
        send_now: bool = False,
    ) -> Claim:
        """`Claims.claim`."""
        return self.claims.claim(campaign_id, run_id, lease_seconds, take_over_from, send_now)

    def renew(self, campaign_id: str, run_id: str, lease_seconds: float) -> bool:
        """`Claims.renew`."""
        return self.claims.renew(campaign_id, run_id, lease_seconds)

    def status(self, campaign_id: str) -> str | None:
        """`Claims.status`, noted."""
        status = self.claims.status(campaign_id)
        if status == "paused":
            self.saw_pause.setdefault("poll", time.perf_counter())
        return status

    def release(self, campaign_id: str, run_id: str) -> None:
        """`Claims.release`."""
        self.claims.release(campaign_id, run_id)

    def hold_back(self, campaign_id: str, run_id: str, reason: str, actor: str) -> bool:
        """`Claims.hold_back`."""
        return self.claims.hold_back(campaign_id, run_id, reason, actor)


class WatchedAudience:
    """The store's audience, for the send: its outcome writes note when one first saw a pause."""

    def __init__(self, audience: Audience, saw_pause: SawPause) -> None:
        self.audience = audience
        self.saw_pause = saw_pause

    def pending_chunks(
        self, campaign_id: str, chunk_size: int, id_range: IdRange | None = None
    ) -> Iterator[pl.DataFrame]:
        """`Audience.pending_chunks`."""
        return self.audience.pending_chunks(campaign_id, chunk_size, id_range)

    def number_keepers(self, campaign_id: str, phone_numbers: Sequence[str]) -> pl.DataFrame:
        """`Audience.number_keepers`."""
        return self.audience.number_keepers(campaign_id, phone_numbers)

    def record_outcomes(
        self, campaign_id: str, run_id: str, outcomes: Outcomes, lease_seconds: float
    ) -> WriteAck:
        """`Audience.record_outcomes`, noted."""
        ack = self.audience.record_outcomes(campaign_id, run_id, outcomes, lease_seconds)
        if ack.status == "paused":
            self.saw_pause.setdefault("write", time.perf_counter())
        return ack


def _config_default(name: str) -> Any:
    return CampaignConfig.model_fields[name].default


def _audience(database_url: str, campaign_id: str) -> dict[str, Any]:
    """The campaign's recipients by status, and the facts the checks need."""
    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            "SELECT status, count(*), count(sqs_message_id), "
            "count(*) FILTER (WHERE phone_number NOT LIKE '+%%') "
            "FROM campaign_audience WHERE campaign_id = %s GROUP BY status",
            (campaign_id,),
        ).fetchall()
        message_ids = {
            row[0]
            for row in connection.execute(
                "SELECT sqs_message_id FROM campaign_audience "
                "WHERE campaign_id = %s AND status = 'ready_to_send'",
                (campaign_id,),
            )
        }
        campaign = connection.execute(
            "SELECT status, queued_count, failed_count, pending_count, lease_run_id "
            "FROM campaigns WHERE id = %s",
            (campaign_id,),
        ).fetchone()
    assert campaign is not None
    return {
        "counts": {status: count for status, count, _, _ in rows},
        "with_message_id": {status: with_id for status, _, with_id, _ in rows},
        "invalid_phone": {status: invalid for status, _, _, invalid in rows},
        "message_ids": message_ids,
        "campaign": dict(
            zip(("status", "queued", "failed", "pending", "lease"), campaign, strict=True)
        ),
    }


def _queue_messages(endpoint: str, queue_url: str, expected: int) -> int:
    """Messages on the queue (visible and in flight), given a moment to reach `expected`."""
    client = admin_client(endpoint)
    deadline = time.monotonic() + QUEUE_SETTLE_S
    while True:
        attributes = client.get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        depth = sum(int(value) for value in attributes.values())
        if depth == expected or time.monotonic() > deadline:
            return depth
        time.sleep(0.2)


def _checks(
    stats: SendStats, audience: dict[str, Any], calls: Calls, depth: int, recipients: int
) -> dict[str, bool]:
    counts = audience["counts"]
    queued, pending, failed = (counts.get(s, 0) for s in ("ready_to_send", "pending", "failed"))
    campaign = audience["campaign"]
    return {
        "stopped_for_pause": stats.stopped == "paused" and campaign["status"] == "paused",
        "paused_before_the_end": pending > 0,
        "only_known_statuses": set(counts) <= {"ready_to_send", "pending", "failed"},
        "every_recipient_counted": queued + pending + failed == recipients,
        "ready_to_send_have_message_ids": audience["with_message_id"].get("ready_to_send", 0)
        == queued,
        "pending_have_none": audience["with_message_id"].get("pending", 0) == 0,
        "failed_only_invalid_phones": audience["invalid_phone"].get("failed", 0) == failed,
        "accepted_ids_all_recorded": audience["message_ids"] == set(calls.message_ids)
        and len(calls.message_ids) == queued,
        "queue_holds_ready_to_send": depth == queued,
        "stats_match_database": stats.queued == queued and stats.failed == failed,
        "live_counts_match": (campaign["queued"], campaign["failed"], campaign["pending"])
        == (queued, failed, pending),
    }


def measure_once(
    database_url: str,
    campaign_id: str,
    recipients: int,
    loopback: str,
    endpoint: str,
    send_seconds: float,
    pause: Callable[[], Pause] | None,
) -> dict[str, Any]:
    """One run paused after `send_seconds` by `pause` (None: this process): latencies, checks."""
    reset(database_url, [campaign_id])
    store = CampaignStore(database_url=database_url)
    saw_pause: SawPause = {}
    claims = WatchedClaims(store.claims, saw_pause)
    watched_audience = WatchedAudience(store.audience, saw_pause)
    run_id = f"pause-latency-{uuid.uuid4().hex[:12]}"
    lease_seconds = _config_default("lease_seconds")
    with fresh_queue(loopback) as queue_url:
        resource = SqsQueue(queue_url=queue_url, region_name=REGION, endpoint_url=endpoint)
        client = TimedClient(resource.client)
        calls = client.calls
        claim = claims.claim(campaign_id, run_id, lease_seconds)
        shard = ShardSend(
            claim.message,
            Lease(claims, campaign_id, run_id, lease_seconds),
            watched_audience,
            resource.batch_queue(client),
            store.suppressions,
            recipients_per_chunk=_config_default("recipients_per_chunk"),
            outcomes_per_write=_config_default("outcomes_per_write"),
        )

        def send() -> tuple[SendStats, float]:
            stats = shard.run()
            return stats, time.perf_counter()

        with ThreadPoolExecutor(1, thread_name_prefix="campaign-run") as pool:
            run = pool.submit(send)
            deadline = time.monotonic() + FIRST_BATCH_TIMEOUT_S
            while not calls.accepted_at:
                if run.done() or time.monotonic() > deadline:
                    run.result(timeout=0)  # raises the run's error, if any
                    raise RuntimeError("SQS accepted no batch")
                time.sleep(0.005)
            sending_since = calls.accepted_at[0]
            time.sleep(send_seconds)
            with calls.lock:
                accepted_before = len(calls.message_ids)
            paused_at, committed_at, changed = (pause or (lambda: _pause(store, campaign_id)))()
            stats, returned_at = run.result(timeout=RUN_TIMEOUT_S)
        audience = _audience(database_url, campaign_id)
        queued = audience["counts"].get("ready_to_send", 0)
        depth = _queue_messages(loopback, queue_url, queued)
    store.engine.dispose()
    checks = _checks(stats, audience, calls, depth, recipients)
    return {
        "pause_to_return_s": round(returned_at - paused_at, 3),
        "pause_to_last_accepted_s": round(max(calls.accepted_at) - paused_at, 3),
        "pause_to_last_batch_started_s": round(max(calls.started) - paused_at, 3),
        "pause_call_s": round(committed_at - paused_at, 4),
        **{
            f"{path}_saw_pause_s": round(saw_pause[path] - paused_at, 3)
            if path in saw_pause
            else None
            for path in ("poll", "write")
        },
        "accepted_after_pause": len(calls.message_ids) - accepted_before,
        "messages_per_s_before_pause": round(accepted_before / (paused_at - sending_since)),
        "pause_changed": changed,
        "stopped": stats.stopped,
        "queued": queued,
        "pending": audience["counts"].get("pending", 0),
        "failed": audience["counts"].get("failed", 0),
        "queue_messages": depth,
        "checks_failed": [name for name, passed in checks.items() if not passed],
    }


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--send-seconds", type=float, default=3.0)
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="send through the latency proxy (0: none)"
    )
    parser.add_argument(
        "--pause-in-process", action="store_true", help="pause from this process, not another"
    )
    args = parser.parse_args()
    # boto3's default chain must find the local endpoints' fake credentials, never real ones.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS"):
        os.environ.pop(name, None)
    os.environ.update(FAKE_CREDENTIALS)

    runs = []
    with contextlib.ExitStack() as stack:
        # stdout is for the JSON line: the latency proxy's report goes to stderr with the rest.
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        database_url = stack.enter_context(temporary_database())
        campaign_id = seed(database_url, args.recipients, campaigns=1).campaign_ids[0]
        loopback = stack.enter_context(fauxqs_server())
        endpoint = loopback
        if args.latency_ms:
            endpoint = stack.enter_context(latency_proxy(loopback, args.latency_ms))
        pause = None
        if not args.pause_in_process:
            pause = stack.enter_context(pauser_process(database_url, campaign_id))
        for repeat in range(args.repeats):
            run = measure_once(
                database_url,
                campaign_id,
                args.recipients,
                loopback,
                endpoint,
                args.send_seconds,
                pause,
            )
            print(f"repeat {repeat + 1}: {run}", file=sys.stderr, flush=True)
            runs.append(run)
    measures = ("pause_to_return_s", "pause_to_last_accepted_s", "pause_to_last_batch_started_s")
    failed = sorted({name for run in runs for name in run["checks_failed"]})
    print(
        json.dumps(
            {
                "recipients": args.recipients,
                "repeats": args.repeats,
                "send_seconds": args.send_seconds,
                "sink": f"fauxqs {fauxqs_version()}"
                + (f" + {args.latency_ms:g} ms proxy" if args.latency_ms else " (loopback)"),
                "max_concurrent_batches": DEFAULT_MAX_CONCURRENT_BATCHES,
                "status_poll_s": STATUS_POLL_SECONDS,
                "paused_from": "this process" if args.pause_in_process else "another process",
                **{measure: _spread([run[measure] for run in runs]) for measure in measures},
                "accepted_after_pause": _spread([run["accepted_after_pause"] for run in runs]),
                "checks_failed": failed,
                "runs": runs,
            }
        )
    )
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
