"""Stream a claimed campaign's pending recipients onto SQS and record what became of each.

The loop behind the `send_campaign_messages` op, free of Dagster: read a chunk of pending
recipients, build and validate their payloads, send the valid ones in overlapping batches of
ten, and write outcomes in windows while sending goes on. A crash loses at most the window
not yet written; those recipients stay `pending` for the next run.

A pause or cancel (the campaign's status, read every second and at every outcome write) or a
`StopSignal` from the caller (a terminated run) stops it the same way: no new batch is sent,
the batches in flight answer and are recorded, the rest stay `pending`.
"""

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import polars as pl
import sqlalchemy as sa

from campaign_pipeline.batching import batch_slices
from campaign_pipeline.errors import IncompleteAnswer, SendInterrupted
from campaign_pipeline.lifecycle import STOPPED_STATUSES
from campaign_pipeline.pacing import Pacer
from campaign_pipeline.payloads import CampaignMessage, build_payloads
from campaign_pipeline.resources.campaign_store import CampaignStore, IdRange, Outcomes, WriteAck
from campaign_pipeline.resources.sqs_queue import BatchResult, SqsQueue
from campaign_pipeline.text import database_reason

# How often a sending run reads its campaign's status: a pause stops it within about this
# long plus the batches in flight.
STATUS_POLL_SECONDS = 1.0
# The longest a window of outcomes waits to be written, however few it holds.
WINDOW_SECONDS = 1.0


@dataclass
class SendStats:
    """What one run did for a campaign, for the op's metadata and the CLI's summary."""

    recipients: int = 0
    queued: int = 0
    failed_by_reason: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    retried_entries: int = 0
    seconds: float = 0.0
    # Entries SQS refused for good, by error code.
    rejected_by_code: Counter[str] = field(default_factory=Counter)
    # Why sending stopped before every pending recipient had an outcome: "paused",
    # "cancelled" (the campaign's status), "rejected" (more than the run's bound of entries
    # refused for good) or what the caller's StopSignal said.
    stopped: str | None = None

    @property
    def rejected(self) -> int:
        """Entries SQS refused for good."""
        return sum(self.rejected_by_code.values())

    @property
    def failed(self) -> int:
        """Recipients marked failed by this run."""
        return sum(self.failed_by_reason.values())

    @property
    def messages_per_second(self) -> float:
        """Recipients handled (queued or failed) per second of wall time."""
        return (self.queued + self.failed) / self.seconds if self.seconds else 0.0


def merge_stats(parts: Iterable[SendStats]) -> SendStats:
    """The stats of several send steps as one (their durations overlap: the longest counts)."""
    total = SendStats()
    for part in parts:
        total.recipients += part.recipients
        total.queued += part.queued
        total.failed_by_reason += part.failed_by_reason
        total.batches += part.batches
        total.retried_entries += part.retried_entries
        total.rejected_by_code += part.rejected_by_code
        total.seconds = max(total.seconds, part.seconds)
        total.stopped = total.stopped or part.stopped
    return total


class StopSignal:
    """Why sending must stop, set once by whoever notices first (thread-safe)."""

    def __init__(self) -> None:
        self._reason: str | None = None
        self._lock = threading.Lock()

    def stop(self, reason: str) -> None:
        """Ask the loop to stop; the first reason given is kept."""
        with self._lock:
            self._reason = self._reason or reason

    @property
    def reason(self) -> str | None:
        """The reason given, or None while sending may go on."""
        return self._reason


T = TypeVar("T")

# Windows of outcomes being written while sending goes on, each by its own writer thread and
# connection: a PostgreSQL backend updates ~30k rows/s here, so writes overlap sending and each
# other. A crash loses at most these windows plus the one being filled.
WRITES_IN_FLIGHT = 4


def _writer_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(WRITES_IN_FLIGHT, thread_name_prefix="outcome-writer")


@dataclass
class _Recorder:
    """Gathers outcomes and writes each window on a writer thread.

    A window is written when it is full or a second old, whichever comes first: a slow send
    still shows progress (and loses little in a crash) every second.
    """

    store: CampaignStore
    campaign_id: str
    run_id: str
    lease_seconds: float
    window: int
    stats: SendStats
    stop: StopSignal
    max_rejected: int | None = None
    outcomes: Outcomes = field(default_factory=Outcomes)
    lease_held: bool = True
    writer: ThreadPoolExecutor = field(default_factory=_writer_pool)
    writes: deque[Future[WriteAck]] = field(default_factory=deque)
    window_started: float = field(default_factory=time.monotonic)

    def add_batch(self, result: BatchResult) -> None:
        self.outcomes.add_sent(result.accepted_ids, result.message_ids)
        self.stats.queued += len(result.accepted_ids)
        for id_, code, message in result.rejected:
            summary = f"SQS rejected the message ({code})"
            self.outcomes.add_failed([id_], [f"{summary}: {message}" if message else summary])
            self.stats.failed_by_reason[summary] += 1
            self.stats.rejected_by_code[code] += 1
        if self.max_rejected is not None and self.stats.rejected > self.max_rejected:
            # Refused for good this often, the rest would be too: stop as for a pause.
            self.stop.stop("rejected")
        if (
            len(self.outcomes) >= self.window
            or time.monotonic() - self.window_started >= WINDOW_SECONDS
        ):
            self.flush()

    def add_invalid(self, invalid: pl.DataFrame) -> None:
        if invalid.is_empty():
            return
        self.outcomes.add_failed(invalid["id"].to_list(), invalid["failure_reason"].to_list())
        for reason, count in invalid.group_by("failure_reason").len().iter_rows():
            self.stats.failed_by_reason[reason] += count
        self.flush()

    def flush(self) -> None:
        """Hand the current window to the writer; wait only if too many are in flight."""
        if len(self.outcomes):
            write = self.writer.submit(
                self.store.record_outcomes,
                self.campaign_id,
                self.run_id,
                self.outcomes,
                self.lease_seconds,
            )
            # A pause the write saw stops sending as soon as it is written, on the writer.
            write.add_done_callback(self._heed)
            self.writes.append(write)
            self.outcomes = Outcomes()
        self.window_started = time.monotonic()
        while len(self.writes) > WRITES_IN_FLIGHT:
            self._settle()

    def drain(self) -> None:
        """Write everything gathered and wait for it; raises the first write error."""
        self.flush()
        while self.writes:
            self._settle()

    def close(self) -> None:
        """Finish the writes in flight (errors were or will be raised by `drain`)."""
        self.writer.shutdown(wait=True)

    def _settle(self) -> None:
        try:
            ack = self.writes.popleft().result()
        except sa.exc.SQLAlchemyError as error:
            # The database went away: what SQS accepted since the last write is unrecorded,
            # so it is sent again by the next run (a FIFO queue drops it as a duplicate).
            raise SendInterrupted(
                f"the campaign store failed to record outcomes: {database_reason(error)}",
                self.stats,
            ) from error
        self.lease_held = ack.lease_held and self.lease_held

    def _heed(self, write: Future[WriteAck]) -> None:
        if write.exception() is None and write.result().status in STOPPED_STATUSES:
            self.stop.stop(str(write.result().status))


class _CampaignWatch:
    """Reads the campaign's status every second and renews the run's lease on a timer.

    A status of `paused` or `cancelled` sets the stop signal. Outcome writes renew the lease
    too, but a send stuck in SQS retries can go minutes without one. Renewing every third of
    the lease keeps a live run's claim however slow SQS is, so the lease can be short and a
    crashed run's campaign is free again soon: within SQS's five-minute FIFO deduplication
    window, which then drops whatever the crashed run sent but never recorded. The run stops
    sending once its last confirmed renewal is two thirds of a lease old (the database
    unreachable, say): another run could take over when the lease runs out.
    """

    def __init__(
        self,
        store: CampaignStore,
        campaign_id: str,
        run_id: str,
        lease_seconds: float,
        stop: StopSignal,
    ) -> None:
        self._renew = lambda: store.renew_lease(campaign_id, run_id, lease_seconds)
        self._status = lambda: store.campaign_status(campaign_id)
        self._lease_seconds = lease_seconds
        self._stop_signal = stop
        self._lost = False
        self._confirmed_at = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="campaign-watch", daemon=True)

    def __enter__(self) -> "_CampaignWatch":
        # At once: the claim may be a while ago (another step, another process), and a pause
        # may have come since.
        self._confirm()
        self._check_status()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def held(self) -> bool:
        """The lease is ours, confirmed recently enough to send on."""
        age = time.monotonic() - self._confirmed_at
        return not self._lost and age < self._lease_seconds * 2 / 3

    def lost(self) -> None:
        """An outcome write found the lease gone."""
        self._lost = True

    def _confirm(self) -> None:
        started = time.monotonic()
        try:
            renewed = self._renew()
        except Exception:  # the database unreachable: retried next time; `held` turns False
            return
        if renewed:
            self._confirmed_at = started
        else:
            self._lost = True

    def _check_status(self) -> None:
        try:
            status = self._status()
        except Exception:  # unreachable: the lease renewal notices if it lasts
            return
        if status in STOPPED_STATUSES:
            self._stop_signal.stop(status)

    def _loop(self) -> None:
        renew_every = self._lease_seconds / 3
        poll_every = min(STATUS_POLL_SECONDS, renew_every)
        renewed_at = time.monotonic()
        while not self._stop.wait(poll_every) and not self._lost:
            self._check_status()
            if time.monotonic() - renewed_at >= renew_every:
                renewed_at = time.monotonic()
                self._confirm()


def _batches(
    valid: pl.DataFrame,
    max_bytes: int,
    keep_going: Callable[[], bool],
    pacer: Pacer | None = None,
) -> Iterator[tuple[list[str], list[str]]]:
    ids = valid["id"].to_list()
    bodies = valid["payload"].to_list()
    for batch in batch_slices(valid["payload"].str.len_bytes().to_numpy(), max_bytes):
        if not keep_going():
            return
        # Paced here, where batches are handed out: the calls in flight stay concurrent.
        if pacer is not None and not pacer.take(batch.stop - batch.start, keep_going):
            return
        yield ids[batch], bodies[batch]


def _prefetched(items: Iterator[T]) -> Iterator[T]:
    """Yield `items`, making the next one on a thread while the caller works on this one.

    Reading and building the next chunk (a COPY and Polars, both mostly outside the GIL) then
    overlaps the sending of this one, instead of stalling it at every chunk boundary.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="chunk-reader") as reader:
        upcoming = reader.submit(next, items, None)
        while (item := upcoming.result()) is not None:
            upcoming = reader.submit(next, items, None)
            yield item


def _queue_chunks(
    message: CampaignMessage,
    store: CampaignStore,
    queue: SqsQueue,
    run_id: str,
    recipients_per_chunk: int,
    id_range: IdRange | None,
    recorder: _Recorder,
    lease: _CampaignWatch,
    on_chunk: Callable[[SendStats], None],
    started: float,
    pacer: Pacer | None = None,
    fair_group_id: str | None = None,
) -> None:
    stats = recorder.stats

    def lease_held() -> bool:
        if not recorder.lease_held:
            lease.lost()
        return lease.held()

    def keep_sending() -> bool:
        return recorder.stop.reason is None and lease_held()

    max_bytes = queue.max_message_bytes()
    chunks = store.iter_pending_recipients(message.campaign_id, recipients_per_chunk, id_range)
    for built in _prefetched(build_payloads(message, chunk, max_bytes) for chunk in chunks):
        if recorder.stop.reason is not None:
            break
        stats.recipients += built.height
        recorder.add_invalid(built.filter(pl.col("failure_reason").is_not_null()))
        valid = built.filter(pl.col("failure_reason").is_null())
        error: Exception | None = None
        batches = _batches(valid, max_bytes, keep_sending, pacer)
        for result in queue.send_batches(message.campaign_id, batches, fair_group_id):
            stats.batches += 1
            stats.retried_entries += result.retried_entries
            recorder.add_batch(result)
            error = error or result.error
        recorder.drain()
        stats.seconds = time.perf_counter() - started
        if error is not None:
            problem = (
                f"SQS answered incompletely: {error}"
                if isinstance(error, IncompleteAnswer)
                else f"SQS failed past its retries: {type(error).__name__}: {error}"
            )
            raise SendInterrupted(problem, stats) from error
        if recorder.stop.reason is not None:
            break
        if not lease_held():
            raise SendInterrupted(
                f"run {run_id} no longer holds campaign {message.campaign_id} (another run took "
                "it over, another step of this run failed and released it, or the lease could "
                "not be renewed)",
                stats,
            )
        on_chunk(stats)
    stats.stopped = recorder.stop.reason


def queue_campaign_messages(
    message: CampaignMessage,
    store: CampaignStore,
    queue: SqsQueue,
    run_id: str,
    *,
    recipients_per_chunk: int,
    outcomes_per_write: int,
    lease_seconds: float,
    id_range: IdRange | None = None,
    on_chunk: Callable[[SendStats], None] = lambda stats: None,
    stop: StopSignal | None = None,
    max_messages_per_second: float | None = None,
    max_rejected: int | None = None,
) -> SendStats:
    """Queue every pending recipient of the campaign; return what happened.

    Returns early, with `stopped` set and every confirmed outcome recorded, when the campaign
    is paused or cancelled, `stop` is signalled, or SQS refused more than `max_rejected`
    entries for good. Raises `SendInterrupted` (after recording
    every confirmed outcome) when SQS keeps failing past its retries or another run took the
    campaign over. With `max_messages_per_second`, batches are handed out no faster than that
    (see `pacing.py`). Raises `SettingsError`, before sending anything, for an unusable
    SQS_FAIR_QUEUE_GROUP.
    """
    fair_group_id = queue.fair_group_id(message.campaign_id, message.organization_id)
    pacer = Pacer(max_messages_per_second) if max_messages_per_second is not None else None
    started = time.perf_counter()
    stats = SendStats()
    stop = stop or StopSignal()
    recorder = _Recorder(
        store,
        message.campaign_id,
        run_id,
        lease_seconds,
        outcomes_per_write,
        stats,
        stop,
        max_rejected,
    )
    try:
        with _CampaignWatch(store, message.campaign_id, run_id, lease_seconds, stop) as lease:
            _queue_chunks(
                message,
                store,
                queue,
                run_id,
                recipients_per_chunk,
                id_range,
                recorder,
                lease,
                on_chunk,
                started,
                pacer,
                fair_group_id,
            )
    finally:
        recorder.close()
    stats.seconds = time.perf_counter() - started
    return stats
