"""Send one shard of a claimed campaign: the whole trip down to SQS and back to the store.

`ShardSend(...).run()` reads the shard's pending recipients a chunk at a time (the next chunk
read and built on a thread while this one is sent), builds and validates their payloads, sends
the valid ones in batches of ten with several calls in flight (paced to a rate cap if there is
one), and writes outcomes in windows while sending goes on. A pause or cancel, the rejection
guard, a lost lease or a terminated run stop it the same way (see `stop.py`). Free of Dagster.
"""

import functools
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import polars as pl
import sqlalchemy as sa

from campaign_pipeline.batching import batch_slices
from campaign_pipeline.errors import IncompleteAnswer, SendInterrupted
from campaign_pipeline.failure_codes import FailureCode
from campaign_pipeline.frequency_caps import FrequencyCap
from campaign_pipeline.payloads import CampaignMessage, build_payloads
from campaign_pipeline.sending.frequency import CapReservations, MarketingSendLookups
from campaign_pipeline.sending.guards import (
    PreflightCount,
    exact_preflight,
    hold_back_for_rejections,
)
from campaign_pipeline.sending.lease import Lease, LeaseWatch
from campaign_pipeline.sending.outcomes import OutcomeRecorder, OutcomeWriter
from campaign_pipeline.sending.pacing import Pacer
from campaign_pipeline.sending.skips import (
    SkipLookups,
    SuppressionLookups,
    SuppressionWatch,
    apply_skips,
)
from campaign_pipeline.sending.stats import SendStats
from campaign_pipeline.sending.stop import StopSignal, run_until_interrupted
from campaign_pipeline.sqs import BatchResult
from campaign_pipeline.store.records import IdRange
from campaign_pipeline.text import database_reason

T = TypeVar("T")


class PendingAudience(OutcomeWriter, SkipLookups, Protocol):
    """The audience a send reads and writes (`store.audience.Audience`)."""

    def pending_chunks(
        self, campaign_id: str, chunk_size: int, id_range: IdRange | None = None
    ) -> Iterator[pl.DataFrame]:
        """The campaign's pending recipients in chunks, by id."""
        ...


class BatchQueue(Protocol):
    """Where the messages go (`sqs.SqsBatchQueue`)."""

    queue_url: str

    def max_message_bytes(self) -> int:
        """The largest message the queue takes (it also bounds a batch)."""
        ...

    def fair_group_id(self, campaign_id: str, organization_id: str) -> str | None:
        """The MessageGroupId of the campaign's messages on a fair queue, if any."""
        ...

    def send_batches(
        self,
        campaign_id: str,
        batches: Iterable[tuple[Sequence[str], Sequence[str]]],
        fair_group_id: str | None = None,
    ) -> Iterator[BatchResult]:
        """Send (ids, bodies) batches; yield each result as it ends."""
        ...


def _prefetched(items: Iterator[T]) -> Generator[T]:
    """Yield `items`, making the next one on a thread while the caller works on this one.

    Reading and building the next chunk (a COPY and Polars, both mostly outside the GIL) then
    overlaps the sending of this one, instead of stalling it at every chunk boundary.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="chunk-reader") as reader:
        upcoming = reader.submit(next, items, None)
        while (item := upcoming.result()) is not None:
            upcoming = reader.submit(next, items, None)
            yield item


@dataclass
class ShardSend:
    """One send step's work: the pending recipients of `id_range` (all of them when None).

    `max_messages_per_second` paces batches as they are handed out; `max_rejected` bounds the
    entries SQS may refuse for good before the campaign is held back; `preflight_max_invalid`
    (a campaign counted exactly, see `guards.defers_to_the_send`) builds every payload first
    and holds the campaign back, nothing sent, when too many are invalid. With a
    `frequency_cap` (`frequency.cap_for_sending`), each chunk's recipients take their places
    under it in `marketing_sends` before they are sent. `on_chunk` hears the
    running counts after each chunk, `on_preflight` the count, `on_warning` what went wrong on
    the way out.
    """

    message: CampaignMessage
    lease: Lease
    audience: PendingAudience
    queue: BatchQueue
    suppressions: SuppressionLookups
    id_range: IdRange | None = None
    marketing_sends: MarketingSendLookups | None = None
    frequency_cap: FrequencyCap | None = None
    recipients_per_chunk: int = 50_000
    outcomes_per_write: int = 1_000
    max_messages_per_second: float | None = None
    max_rejected: int | None = None
    preflight_max_invalid: float | None = None
    on_chunk: Callable[[SendStats], None] = lambda stats: None
    on_preflight: Callable[[PreflightCount], None] = lambda counted: None
    on_warning: Callable[[str], None] = lambda line: None

    def run(
        self,
        stop: StopSignal | None = None,
        interrupts: tuple[type[BaseException], ...] = (),
    ) -> SendStats:
        """Queue every pending recipient of the shard; return what happened.

        Returns early, with `stopped` set and every confirmed outcome recorded, when the
        campaign is paused or cancelled or `stop` is signalled. With `interrupts`, the send
        runs off the calling thread, and one of them raised there stops it gracefully before
        it is raised again. On any error the lease is let go (a database that failed lets it
        run out).

        Raises:
            CampaignHeldBack: SQS refused more than `max_rejected` entries for good; the
                campaign is paused.
            SendInterrupted: SQS kept failing past its retries, the store could not record
                outcomes, or the run lost the campaign; every confirmed outcome is recorded.
        """
        stop = stop or StopSignal()
        try:
            if interrupts:
                stats = run_until_interrupted(lambda: self._send(stop), stop, interrupts)
            else:
                stats = self._send(stop)
        except SendInterrupted:
            if problem := self.lease.release_if_reachable():
                self.on_warning(problem)
            raise
        except interrupts:
            raise
        except Exception:
            self.lease.release()
            raise
        if stats.stopped == "rejected" and self.max_rejected is not None:
            hold_back_for_rejections(self.lease, stats, self.max_rejected)
        return stats

    def _send(self, stop: StopSignal) -> SendStats:
        fair_group_id = self.queue.fair_group_id(
            self.message.campaign_id, self.message.organization_id
        )
        pacer = (
            Pacer(self.max_messages_per_second)
            if self.max_messages_per_second is not None
            else None
        )
        started = time.perf_counter()
        recorder = OutcomeRecorder(
            self.audience,
            self.message.campaign_id,
            self.lease.run_id,
            self.lease.seconds,
            self.outcomes_per_write,
            SendStats(),
            stop,
            self.max_rejected,
        )
        try:
            with self.lease.watch(stop) as watch:
                self._send_chunks(recorder, watch, started, pacer, fair_group_id)
        finally:
            recorder.close()
        recorder.stats.seconds = time.perf_counter() - started
        return recorder.stats

    def _prepared(self, chunk: pl.DataFrame, max_bytes: int) -> pl.DataFrame:
        """The chunk's payloads, with every recipient that is not to be sent failed and coded.

        All but the frequency cap, which `CapReservations.reserve` decides after this.
        """
        built = build_payloads(self.message, chunk, max_bytes)
        return apply_skips(
            self.audience, self.suppressions, self.message, built, chunk["phone_number"]
        )

    def _reservations(self) -> CapReservations | None:
        if self.frequency_cap is None or self.marketing_sends is None:
            return None
        return CapReservations(self.marketing_sends, self.message, self.frequency_cap)

    def _send_chunks(
        self,
        recorder: OutcomeRecorder,
        watch: LeaseWatch,
        started: float,
        pacer: Pacer | None,
        fair_group_id: str | None,
    ) -> None:
        stats, stop = recorder.stats, recorder.stop

        def lease_held() -> bool:
            if not recorder.lease_held:
                watch.lost()
            return watch.held()

        def keep_sending() -> bool:
            return stop.reason is None and lease_held()

        campaign_id = self.message.campaign_id
        max_bytes = self.queue.max_message_bytes()
        # Before the first chunk is checked: nothing suppressed from then on is missed.
        late = SuppressionWatch(self.suppressions, self.message)
        capped = self._reservations()
        with self._prepared_chunks(max_bytes, capped) as all_built:
            if self.preflight_max_invalid is not None:
                # Every payload built before the first batch: the guard counts what is sent.
                ready = list(all_built)
                self.on_preflight(exact_preflight(self.lease, ready, self.preflight_max_invalid))
                all_built = iter(ready)
            for built in all_built:
                if stop.reason is not None:
                    break
                if capped is not None:
                    capped.sending()
                stats.recipients += built.height
                recorder.add_skipped(built.filter(pl.col("failure_code").is_not_null()))
                valid = built.filter(pl.col("failure_code").is_null())
                batches = _batches(
                    valid, max_bytes, keep_sending, pacer, late, recorder.add_skipped
                )
                accepted_ids = self._queue(recorder, batches, fair_group_id, started)
                if capped is not None:
                    self._give_back(functools.partial(capped.sent, valid, accepted_ids))
                if stop.reason is not None:
                    break
                if not lease_held():
                    raise SendInterrupted(
                        f"run {self.lease.run_id} no longer holds campaign {campaign_id} "
                        "(another run took it over, another step of this run failed and "
                        "released it, or the lease could not be renewed)",
                        stats,
                    )
                self.on_chunk(stats)
        stats.stopped = stop.reason

    @contextmanager
    def _prepared_chunks(
        self, max_bytes: int, capped: CapReservations | None
    ) -> Iterator[Iterator[pl.DataFrame]]:
        """The shard's chunks, built (and reserved under the cap) ahead of the send on threads.

        Afterwards the chunks in preparation are finished, and the places of those never
        sent given back.
        """
        chunks = self.audience.pending_chunks(
            self.message.campaign_id, self.recipients_per_chunk, self.id_range
        )
        stages = [_prefetched(self._prepared(chunk, max_bytes) for chunk in chunks)]
        if capped is not None:
            # A stage of its own: the database reserves one chunk while the next is built.
            stages.append(_prefetched(capped.reserve(built) for built in stages[-1]))
        try:
            yield stages[-1]
        finally:
            for stage in reversed(stages):
                stage.close()
            if capped is not None:
                self._give_back(capped.release_unsent)

    def _queue(
        self,
        recorder: OutcomeRecorder,
        batches: Iterator[tuple[list[str], list[str]]],
        fair_group_id: str | None,
        started: float,
    ) -> list[str]:
        """Send a chunk's batches and record every answer; returns the ids SQS accepted.

        Raises:
            SendInterrupted: SQS failed past its retries or answered incompletely; every
                answer is recorded first.
        """
        stats = recorder.stats
        error: Exception | None = None
        accepted_ids: list[str] = []
        for result in self.queue.send_batches(self.message.campaign_id, batches, fair_group_id):
            stats.batches += 1
            stats.retried_entries += result.retried_entries
            recorder.add_batch(result)
            accepted_ids += result.accepted_ids
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
        return accepted_ids

    def _give_back(self, release: Callable[[], None]) -> None:
        """Give back places under the cap; a database that fails keeps them, said once."""
        try:
            release()
        except sa.exc.SQLAlchemyError as error:
            self.on_warning(
                "the frequency cap's places of recipients not sent could not be given back "
                f"({database_reason(error)}); they count until the cap's window passes"
            )


def _without_late(
    ids: list[str],
    bodies: list[str],
    numbers: list[str],
    reasons: dict[str, str],
    skip: Callable[[pl.DataFrame], None],
) -> tuple[list[str], list[str]]:
    """A batch without the recipients whose numbers `reasons` holds; those go to `skip`."""
    late = [number in reasons for number in numbers]
    if not any(late):
        return ids, bodies
    skip(
        pl.DataFrame(
            {
                "id": [id_ for id_, out in zip(ids, late, strict=True) if out],
                "failure_reason": [reasons[n] for n, out in zip(numbers, late, strict=True) if out],
                "failure_code": FailureCode.OPTED_OUT.value,
            }
        )
    )
    kept = [i for i, out in enumerate(late) if not out]
    return [ids[i] for i in kept], [bodies[i] for i in kept]


def _batches(
    valid: pl.DataFrame,
    max_bytes: int,
    keep_going: Callable[[], bool],
    pacer: Pacer | None = None,
    late: SuppressionWatch | None = None,
    skip: Callable[[pl.DataFrame], None] = lambda skipped: None,
) -> Iterator[tuple[list[str], list[str]]]:
    """The valid recipients' (ids, bodies) in batches, as they may be sent now.

    A number suppressed since the send started (`late`) is left out of the batch and handed
    to `skip` as `opted_out` instead.
    """
    ids = valid["id"].to_list()
    bodies = valid["payload"].to_list()
    numbers: list[str] | None = None  # read only once a late suppression appears
    for batch in batch_slices(valid["payload"].str.len_bytes().to_numpy(), max_bytes):
        if not keep_going():
            return
        batch_ids, batch_bodies = ids[batch], bodies[batch]
        if late is not None and (reasons := late.late()):
            if numbers is None:
                numbers = valid["phone_number"].to_list()
            batch_ids, batch_bodies = _without_late(
                batch_ids, batch_bodies, numbers[batch], reasons, skip
            )
            if not batch_ids:
                continue
        # Paced here, where batches are handed out: the calls in flight stay concurrent.
        if pacer is not None and not pacer.take(len(batch_ids), keep_going):
            return
        yield batch_ids, batch_bodies
