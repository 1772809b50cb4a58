"""Skips decided a chunk at a time: codes for the invalid, duplicates of another recipient."""

from collections.abc import Sequence

import polars as pl

from campaign_pipeline.sending.skips import apply_skips, skip_duplicates, with_failure_codes
from campaign_pipeline.store.audience import KEEPER_SCHEMA

A, B = "+15550000001", "+15550000002"


class Keepers:
    """`number_keepers` over a fixed answer; remembers what it was asked."""

    def __init__(self, keepers: dict[str, str]) -> None:
        self.keepers = keepers
        self.asked: list[list[str]] = []

    def number_keepers(self, campaign_id: str, phone_numbers: Sequence[str]) -> pl.DataFrame:
        self.asked.append(sorted(phone_numbers))
        rows = [(n, k) for n, k in self.keepers.items() if n in phone_numbers]
        return pl.DataFrame(rows, schema=KEEPER_SCHEMA, orient="row")


def built(*rows: tuple[str, str | None]) -> pl.DataFrame:
    """A built chunk: (id, failure_reason) per recipient; valid ones get a payload."""
    return pl.DataFrame(
        {
            "id": [id_ for id_, _ in rows],
            "payload": [None if reason else f"payload-{id_}" for id_, reason in rows],
            "failure_reason": [reason for _, reason in rows],
        },
        schema={"id": pl.String, "payload": pl.String, "failure_reason": pl.String},
    )


def test_an_invalid_recipient_is_coded_invalid_and_a_valid_one_not() -> None:
    coded = with_failure_codes(built(("a", None), ("b", "phone number is missing")))
    assert coded["failure_code"].to_list() == [None, "invalid"]


def test_every_recipient_but_the_keeper_is_a_duplicate_naming_it() -> None:
    chunk = with_failure_codes(built(("c", None), ("a", None), ("b", None), ("d", None)))
    numbers = pl.Series([A, A, A, B])
    keepers = pl.DataFrame([(A, "a")], schema=KEEPER_SCHEMA, orient="row")
    skipped = skip_duplicates(chunk, numbers, keepers)
    assert skipped["id"].to_list() == ["c", "a", "b", "d"]
    assert skipped["failure_code"].to_list() == ["duplicate", None, "duplicate", None]
    assert skipped["payload"].to_list() == [None, "payload-a", None, "payload-d"]
    assert skipped["failure_reason"].to_list() == [
        "duplicate of recipient a (the same phone number)",
        None,
        "duplicate of recipient a (the same phone number)",
        None,
    ]


def test_invalid_comes_before_duplicate() -> None:
    """An invalid recipient whose number has a keeper keeps its own reason and code."""
    lookups = Keepers({A: "a"})
    chunk = built(("a", None), ("b", "payload is too large"))
    skipped = apply_skips(lookups, "campaign", chunk, pl.Series([A, A]))
    assert skipped["failure_code"].to_list() == [None, "invalid"]
    assert skipped["failure_reason"].to_list() == [None, "payload is too large"]
    # Only valid numbers are looked up, each once.
    assert lookups.asked == [[A]]


def test_a_chunk_without_duplicates_or_valid_recipients_is_left_as_built() -> None:
    chunk = built(("a", None), ("b", None))
    assert apply_skips(Keepers({}), "campaign", chunk, pl.Series([A, B])).equals(
        with_failure_codes(chunk)
    )
    lookups = Keepers({A: "x"})
    invalid = built(("a", "phone number is missing"))
    assert apply_skips(lookups, "campaign", invalid, pl.Series([None], dtype=pl.String))[
        "failure_code"
    ].to_list() == ["invalid"]
    assert lookups.asked == []
