"""Tests of `batch_slices`: cutting a run of messages into SendMessageBatch calls SQS accepts.

Pure function tests: at most 10 entries and `max_bytes` per batch, order and coverage kept.
"""

import random
from itertools import pairwise

import numpy as np
import polars as pl
import pytest

from campaign_pipeline.batching import MAX_BATCH_ENTRIES, batch_slices


def assert_valid_batches(
    sizes: list[int], max_bytes: int, slices: list[slice], max_entries: int = MAX_BATCH_ENTRIES
) -> None:
    """Batches cover every message once, in order, each within the entry and byte limits."""
    assert all(batch.step is None for batch in slices)
    covered = [position for batch in slices for position in range(batch.start, batch.stop)]
    assert covered == list(range(len(sizes)))
    for batch in slices:
        assert 1 <= batch.stop - batch.start <= max_entries
        assert sum(sizes[batch]) <= max_bytes


def test_no_messages_make_no_batches() -> None:
    """An empty run of messages needs no SendMessageBatch call."""
    assert batch_slices([], max_bytes=1024) == []


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (1, [slice(0, 1)]),
        (9, [slice(0, 9)]),
        (10, [slice(0, 10)]),
        (11, [slice(0, 10), slice(10, 11)]),
        (20, [slice(0, 10), slice(10, 20)]),
        (25, [slice(0, 10), slice(10, 20), slice(20, 25)]),
    ],
)
def test_small_messages_are_cut_into_runs_of_ten(count: int, expected: list[slice]) -> None:
    """Messages well under the byte limit go ten to a batch, the last batch holding the rest."""
    sizes = [100] * count
    slices = batch_slices(sizes, max_bytes=262_144)
    assert slices == expected
    assert_valid_batches(sizes, 262_144, slices)


def test_run_of_ten_over_max_bytes_is_split_greedily() -> None:
    """A run of ten whose total is too large is cut each time the next message would overflow."""
    sizes = [60, 30, 10, 50, 50, 100, 1, 1, 1, 1, 5]
    slices = batch_slices(sizes, max_bytes=100)
    assert slices == [slice(0, 3), slice(3, 5), slice(5, 6), slice(6, 10), slice(10, 11)]
    assert_valid_batches(sizes, 100, slices)


def test_equal_messages_over_max_bytes_fill_each_batch() -> None:
    """Ten messages of 30 bytes under a 100-byte limit go three, three, three and one."""
    sizes = [30] * 10
    slices = batch_slices(sizes, max_bytes=100)
    assert slices == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 10)]


def test_run_totalling_exactly_max_bytes_stays_whole() -> None:
    """A run of ten whose total equals `max_bytes` is one batch."""
    assert batch_slices([10] * 10, max_bytes=100) == [slice(0, 10)]


def test_message_of_exactly_max_bytes_goes_alone() -> None:
    """A message as large as the limit fits, in a batch of its own."""
    sizes = [1, 100, 1]
    assert batch_slices(sizes, max_bytes=100) == [slice(0, 1), slice(1, 2), slice(2, 3)]


@pytest.mark.parametrize("sizes", [[101], [1, 2, 101, 3], [5] * 20 + [1_000]])
def test_message_larger_than_max_bytes_raises(sizes: list[int]) -> None:
    """A message that cannot fit in any batch is an error, not a silently oversized call."""
    with pytest.raises(
        ValueError, match=f"a message of {max(sizes)} bytes cannot fit in 100 bytes"
    ):
        batch_slices(sizes, max_bytes=100)


def test_max_entries_can_be_lowered() -> None:
    """A smaller `max_entries` caps every batch at that many messages."""
    sizes = [10] * 7
    slices = batch_slices(sizes, max_bytes=1_000, max_entries=3)
    assert slices == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert_valid_batches(sizes, 1_000, slices, max_entries=3)


def test_sizes_from_numpy_or_polars_give_the_same_batches() -> None:
    """Sizes as a list, a NumPy array or a Polars column (as dispatch passes them) agree."""
    sizes = [40, 70, 20, 90, 10, 10, 30, 60, 5, 5, 80, 15]
    expected = batch_slices(sizes, max_bytes=100)
    assert batch_slices(np.array(sizes, dtype=np.uint32), max_bytes=100) == expected
    column = pl.Series(["x" * size for size in sizes]).str.len_bytes()
    assert batch_slices(column.to_numpy(), max_bytes=100) == expected


def test_randomised_mixed_sizes_keep_the_invariants() -> None:
    """Mixed small and large messages always give full coverage within both limits."""
    generator = random.Random(20_240_601)
    for _ in range(300):
        max_bytes = generator.choice([100, 1_000, 262_144])
        count = generator.randint(0, 120)
        sizes = [
            generator.choice(
                [
                    generator.randint(1, max(1, max_bytes // 20)),
                    generator.randint(1, max_bytes // 3),
                    generator.randint(max_bytes // 2, max_bytes),
                ]
            )
            for _ in range(count)
        ]
        slices = batch_slices(sizes, max_bytes=max_bytes)
        assert_valid_batches(sizes, max_bytes, slices)
        for start in range(0, count, MAX_BATCH_ENTRIES):
            run = slice(start, min(start + MAX_BATCH_ENTRIES, count))
            if sum(sizes[run]) <= max_bytes:
                # A run of ten that fits is sent as one batch.
                assert run in slices
        for batch, following in pairwise(slices):
            same_run = batch.start // MAX_BATCH_ENTRIES == following.start // MAX_BATCH_ENTRIES
            if same_run:
                # Inside a run, a batch ends only because the next message would not fit.
                assert sum(sizes[batch]) + sizes[following.start] > max_bytes
