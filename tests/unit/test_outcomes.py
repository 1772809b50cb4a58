"""The dispatch loop's parts on their own: outcome windows, writes in flight, chunk prefetch.

A fake store records each outcome write (unit tests; the real writes are in
`test_campaign_store.py`, the whole loop against PostgreSQL and SQS in `test_faults.py`).
"""

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from campaign_pipeline.errors import SendInterrupted
from campaign_pipeline.sending import outcomes as outcome_module
from campaign_pipeline.sending.outcomes import OutcomeRecorder
from campaign_pipeline.sending.shard import _prefetched
from campaign_pipeline.sending.stats import SendStats
from campaign_pipeline.sending.stop import StopSignal
from campaign_pipeline.sqs import BatchResult
from campaign_pipeline.store.records import Outcomes, WriteAck


class FakeStore:
    """Records the size of each outcome write; answers with `ack`, after `release` is set."""

    def __init__(self, ack: WriteAck | None = None, error: Exception | None = None) -> None:
        self.writes: list[int] = []
        self.ack = ack or WriteAck(lease_held=True, status="ready_to_launch")
        self.error = error
        self.release = threading.Event()
        self.release.set()
        self.lock = threading.Lock()
        self.in_progress = 0
        self.most_in_progress = 0

    def record_outcomes(self, campaign_id: str, run_id: str, outcomes: Outcomes, lease: float):
        with self.lock:
            self.in_progress += 1
            self.most_in_progress = max(self.most_in_progress, self.in_progress)
        self.release.wait(10)
        with self.lock:
            self.in_progress -= 1
            self.writes.append(len(outcomes))
        if self.error:
            raise self.error
        return self.ack


def wait_for(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def recorder(store: FakeStore, window: int = 1000) -> OutcomeRecorder:
    return OutcomeRecorder(
        store=store,  # type: ignore[arg-type]
        campaign_id="c",
        run_id="r",
        lease_seconds=60,
        window=window,
        stats=SendStats(),
        stop=StopSignal(),
    )


def accepted(start: int, count: int = 10) -> BatchResult:
    ids = [f"a{i}" for i in range(start, start + count)]
    return BatchResult(accepted_ids=ids, message_ids=[f"m{i}" for i in ids])


def test_a_window_is_written_once_it_is_full() -> None:
    store = FakeStore()
    outcomes = recorder(store, window=25)
    for n in range(10):
        outcomes.add_batch(accepted(10 * n))
    outcomes.drain()
    outcomes.close()
    assert store.writes == [30, 30, 30, 10]
    assert outcomes.stats.queued == 100


def test_a_window_is_written_once_it_is_a_second_old(monkeypatch: pytest.MonkeyPatch) -> None:
    """However few outcomes it holds, so a slow send shows progress."""
    monkeypatch.setattr(outcome_module, "WINDOW_SECONDS", 0.05)
    store = FakeStore()
    outcomes = recorder(store)
    for n in range(3):
        time.sleep(0.06)
        outcomes.add_batch(accepted(10 * n))
    outcomes.drain()
    outcomes.close()
    assert store.writes == [10, 10, 10]


def test_at_most_writes_in_flight_then_the_sender_waits() -> None:
    store = FakeStore()
    store.release.clear()
    outcomes = recorder(store, window=10)
    added = threading.Event()

    def add() -> None:
        for n in range(outcome_module.WRITES_IN_FLIGHT + 2):
            outcomes.add_batch(accepted(10 * n))
        added.set()

    adder = threading.Thread(target=add)
    adder.start()
    # The writers take WRITES_IN_FLIGHT windows; the sender waits on the one after.
    assert wait_for(lambda: store.most_in_progress == outcome_module.WRITES_IN_FLIGHT)
    assert not added.wait(0.3)
    assert store.most_in_progress == outcome_module.WRITES_IN_FLIGHT
    store.release.set()
    adder.join(10)
    outcomes.drain()
    outcomes.close()
    assert added.is_set() and len(store.writes) == outcome_module.WRITES_IN_FLIGHT + 2


def test_a_write_that_finds_the_lease_gone_or_the_campaign_paused_says_so() -> None:
    lost = recorder(FakeStore(WriteAck(lease_held=False, status="ready_to_launch")))
    lost.add_batch(accepted(0))
    lost.drain()
    assert not lost.lease_held and lost.stop.reason is None
    paused = recorder(FakeStore(WriteAck(lease_held=True, status="paused")))
    paused.add_batch(accepted(0))
    paused.drain()
    assert paused.lease_held and paused.stop.reason == "paused"


def test_a_failed_write_interrupts_the_send_with_the_databases_reason() -> None:
    import sqlalchemy as sa

    error = sa.exc.OperationalError("UPDATE", {}, Exception("server closed the connection"))
    outcomes = recorder(FakeStore(error=error))
    outcomes.add_batch(accepted(0))
    with pytest.raises(SendInterrupted, match="server closed the connection"):
        outcomes.drain()


def test_prefetch_yields_every_item_in_order_and_makes_the_next_one_meanwhile() -> None:
    made: list[int] = []

    def items() -> Iterator[int]:
        for n in range(4):
            made.append(n)
            yield n

    seen = []
    for item in _prefetched(items()):
        # While the caller holds this item, the next one is made without being asked for.
        assert wait_for(lambda item=item: len(made) >= min(item + 2, 4)), (item, made)
        seen.append(item)
    assert seen == [0, 1, 2, 3]
    assert made == [0, 1, 2, 3]


def test_prefetch_raises_a_failed_chunk_where_the_caller_takes_it() -> None:
    def items() -> Iterator[Any]:
        yield 1
        raise RuntimeError("the chunk could not be read")

    taken = []
    with pytest.raises(RuntimeError, match="could not be read"):
        for item in _prefetched(items()):
            taken.append(item)
    assert taken == [1]
