"""Outcomes of a send, gathered in windows and written on writer threads while sending goes on.

A window is written when it is full or a second old: a slow send still shows progress, and a
crash loses at most the windows not yet written (those recipients stay `pending`).
"""

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import polars as pl
import sqlalchemy as sa

from campaign_pipeline.errors import SendInterrupted
from campaign_pipeline.failure_codes import FailureCode
from campaign_pipeline.lifecycle import STOPPED_STATUSES
from campaign_pipeline.sending.skips import DUPLICATE_SUMMARY
from campaign_pipeline.sending.stats import SendStats
from campaign_pipeline.sending.stop import StopSignal
from campaign_pipeline.sqs import BatchResult
from campaign_pipeline.store.records import Outcomes, WriteAck
from campaign_pipeline.text import database_reason

# The longest a window of outcomes waits to be written, however few it holds.
WINDOW_SECONDS = 1.0


class OutcomeWriter(Protocol):
    """Where outcomes go (`store.audience.Audience`)."""

    def record_outcomes(
        self, campaign_id: str, run_id: str, outcomes: Outcomes, lease_seconds: float
    ) -> WriteAck:
        """Write the outcomes, extend the lease; say whether it is held and the status."""
        ...


# Windows of outcomes being written while sending goes on, each by its own writer thread and
# connection, so writes overlap sending and each other. A crash loses at most these windows
# plus the one being filled.
WRITES_IN_FLIGHT = 4


def _writer_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(WRITES_IN_FLIGHT, thread_name_prefix="outcome-writer")


@dataclass
class OutcomeRecorder:
    """Gathers outcomes and writes each window on a writer thread.

    A window is written when it is full or a second old, whichever comes first: a slow send
    still shows progress (and loses little in a crash) every second.
    """

    store: OutcomeWriter
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
        """What SQS did with a batch; the rejection guard stops the send past its bound."""
        self.outcomes.add_sent(result.accepted_ids, result.message_ids)
        self.stats.queued += len(result.accepted_ids)
        for id_, code, message in result.rejected:
            summary = f"SQS rejected the message ({code})"
            self.outcomes.add_failed(
                [id_],
                [f"{summary}: {message}" if message else summary],
                FailureCode.SQS_REJECTED,
            )
            self.stats.failed_by_reason[summary] += 1
            self.stats.failed_by_code[FailureCode.SQS_REJECTED] += 1
            self.stats.rejected_by_code[code] += 1
        if self.max_rejected is not None and self.stats.rejected > self.max_rejected:
            # Refused for good this often, the rest would be too: stop as for a pause.
            self.stop.stop("rejected")
        if (
            len(self.outcomes) >= self.window
            or time.monotonic() - self.window_started >= WINDOW_SECONDS
        ):
            self.flush()

    def add_skipped(self, skipped: pl.DataFrame) -> None:
        """Recipients not to be sent (`id`, `failure_reason`, `failure_code`), failed as such."""
        if skipped.is_empty():
            return
        for (code,), part in skipped.group_by("failure_code"):
            failure_code = FailureCode(code)
            self.outcomes.add_failed(
                part["id"].to_list(), part["failure_reason"].to_list(), failure_code
            )
            self.stats.failed_by_code[failure_code] += part.height
            if failure_code == FailureCode.DUPLICATE:
                # Each reason names its keeper: one line for them all.
                self.stats.failed_by_reason[DUPLICATE_SUMMARY] += part.height
                continue
            for reason, count in part.group_by("failure_reason").len().iter_rows():
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
