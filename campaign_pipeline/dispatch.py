"""Stream a claimed campaign's pending recipients onto SQS and record what became of each.

The loop behind the `send_campaign_messages` op, free of Dagster: read a chunk of pending
recipients, build and validate their payloads, send the valid ones in overlapping batches of
ten, and write outcomes in windows while sending goes on. A crash loses at most the window
not yet written; those recipients stay `pending` for the next run.
"""

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import polars as pl

from campaign_pipeline.batching import batch_slices
from campaign_pipeline.payloads import CampaignMessage, build_payloads
from campaign_pipeline.resources.campaign_store import CampaignStore, Outcome
from campaign_pipeline.resources.sqs_queue import EntryOutcome, OutboundMessage, SqsQueue


@dataclass
class SendStats:
    """What one run did for a campaign, for the op's metadata and the CLI's summary."""

    recipients: int = 0
    queued: int = 0
    failed_by_reason: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    retried_entries: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        """Recipients marked failed by this run."""
        return sum(self.failed_by_reason.values())

    @property
    def messages_per_second(self) -> float:
        """Recipients handled (queued or failed) per second of wall time."""
        return (self.queued + self.failed) / self.seconds if self.seconds else 0.0


class SendInterrupted(Exception):
    """Sending stopped before every pending recipient had an outcome; the rest stay pending."""

    def __init__(self, message: str, stats: SendStats) -> None:
        super().__init__(message)
        self.stats = stats


def _rejected(outcome: EntryOutcome) -> tuple[Outcome, str]:
    summary = f"SQS rejected the message ({outcome.error_code})"
    reason = f"{summary}: {outcome.error_message}" if outcome.error_message else summary
    return Outcome(outcome.id, "failed", failure_reason=reason), summary


@dataclass
class _Recorder:
    """Buffers outcomes and writes them to the store once a window is full."""

    store: CampaignStore
    campaign_id: str
    run_id: str
    lease_seconds: float
    window: int
    stats: SendStats
    buffer: list[Outcome] = field(default_factory=list)
    lease_held: bool = True

    def add_batch(self, outcomes: list[EntryOutcome]) -> None:
        for outcome in outcomes:
            if outcome.accepted:
                self.buffer.append(Outcome(outcome.id, "ready_to_send", outcome.message_id))
                self.stats.queued += 1
            else:
                recorded, summary = _rejected(outcome)
                self.buffer.append(recorded)
                self.stats.failed_by_reason[summary] += 1
        if len(self.buffer) >= self.window:
            self.flush()

    def add_invalid(self, invalid: pl.DataFrame) -> None:
        self.buffer += [
            Outcome(id_, "failed", failure_reason=reason)
            for id_, reason in invalid.select("id", "failure_reason").iter_rows()
        ]
        for reason, count in invalid.group_by("failure_reason").len().iter_rows():
            self.stats.failed_by_reason[reason] += count
        self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.lease_held = self.store.record_outcomes(
                self.campaign_id, self.run_id, self.buffer, self.lease_seconds
            )
            self.buffer = []


def _batches(
    valid: pl.DataFrame, max_bytes: int, keep_going: Callable[[], bool]
) -> Iterator[list[OutboundMessage]]:
    ids = valid["id"].to_list()
    bodies = valid["payload"].to_list()
    for batch in batch_slices(valid["payload"].str.len_bytes().to_numpy(), max_bytes):
        if not keep_going():
            return
        yield [OutboundMessage(*pair) for pair in zip(ids[batch], bodies[batch], strict=True)]


def queue_campaign_messages(
    message: CampaignMessage,
    store: CampaignStore,
    queue: SqsQueue,
    run_id: str,
    *,
    recipients_per_chunk: int,
    outcomes_per_write: int,
    lease_seconds: float,
    on_chunk: Callable[[SendStats], None] = lambda stats: None,
) -> SendStats:
    """Queue every pending recipient of the campaign; return what happened.

    Raises `SendInterrupted` (after recording every confirmed outcome) when SQS keeps failing
    past its retries or another run took the campaign over.
    """
    started = time.perf_counter()
    stats = SendStats()
    recorder = _Recorder(
        store, message.campaign_id, run_id, lease_seconds, outcomes_per_write, stats
    )
    max_bytes = queue.max_message_bytes()
    for chunk in store.iter_pending_recipients(message.campaign_id, recipients_per_chunk):
        built = build_payloads(message, chunk, max_bytes)
        stats.recipients += built.height
        recorder.add_invalid(built.filter(pl.col("failure_reason").is_not_null()))
        valid = built.filter(pl.col("failure_reason").is_null())
        error: Exception | None = None
        batches = _batches(valid, max_bytes, lambda: recorder.lease_held)
        for result in queue.send_batches(message.campaign_id, batches):
            stats.batches += 1
            stats.retried_entries += result.retried_entries
            recorder.add_batch(result.outcomes)
            error = error or result.error
        recorder.flush()
        stats.seconds = time.perf_counter() - started
        if error is not None:
            raise SendInterrupted(
                f"SQS failed past its retries: {type(error).__name__}: {error}", stats
            ) from error
        if not recorder.lease_held:
            raise SendInterrupted(
                f"run {run_id} lost its lease on campaign {message.campaign_id} to another run",
                stats,
            )
        on_chunk(stats)
    stats.seconds = time.perf_counter() - started
    return stats
