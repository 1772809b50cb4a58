"""Skips decided a chunk at a time: codes for the invalid, duplicates of another recipient."""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import polars as pl
import sqlalchemy as sa

from campaign_pipeline.categories import category_of
from campaign_pipeline.payloads import CampaignMessage
from campaign_pipeline.sending.skips import (
    SuppressionWatch,
    apply_skips,
    opted_out_reasons,
    skip_duplicates,
    with_failure_codes,
)
from campaign_pipeline.store.audience import KEEPER_SCHEMA
from campaign_pipeline.store.suppressions import COMMIT_OVERLAP, MATCH_SCHEMA

A, B, C = "+15550000001", "+15550000002", "+15550000003"


class Keepers:
    """`number_keepers` over a fixed answer; remembers what it was asked."""

    def __init__(self, keepers: dict[str, str]) -> None:
        self.keepers = keepers
        self.asked: list[list[str]] = []

    def number_keepers(self, campaign_id: str, phone_numbers: Sequence[str]) -> pl.DataFrame:
        self.asked.append(sorted(phone_numbers))
        rows = [(n, k) for n, k in self.keepers.items() if n in phone_numbers]
        return pl.DataFrame(rows, schema=KEEPER_SCHEMA, orient="row")


class Suppressed:
    """`matching` over fixed suppressions (number -> scope); remembers what it was asked."""

    def __init__(self, scopes: dict[str, str]) -> None:
        self.scopes = scopes
        self.asked: list[tuple[str, list[str], str]] = []

    def matching(
        self, organization_id: str, phone_numbers: Sequence[str], category: str
    ) -> pl.DataFrame:
        self.asked.append((organization_id, sorted(phone_numbers), category))
        held = ("marketing", "all") if category == "marketing" else ("all",)
        rows = [
            (number, scope, "replied STOP to +15550000009", SINCE)
            for number, scope in self.scopes.items()
            if number in phone_numbers and scope in held
        ]
        return pl.DataFrame(rows, schema=MATCH_SCHEMA, orient="row")

    def added_for_pending(
        self,
        organization_id: str,
        campaign_id: str,
        category: str,
        since: datetime | None = None,
    ) -> tuple[pl.DataFrame, datetime]:
        return pl.DataFrame(schema=MATCH_SCHEMA), SINCE


SINCE = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def message(category: str = "marketing") -> CampaignMessage:
    return CampaignMessage("campaign", "org-1", "text", message_content="hi", category=category)


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
    skipped = apply_skips(lookups, Suppressed({}), message(), chunk, pl.Series([A, A]))
    assert skipped["failure_code"].to_list() == [None, "invalid"]
    assert skipped["failure_reason"].to_list() == [None, "payload is too large"]
    # Only valid numbers are looked up, each once.
    assert lookups.asked == [[A]]


def test_a_chunk_without_duplicates_or_valid_recipients_is_left_as_built() -> None:
    chunk = built(("a", None), ("b", None))
    numbers = pl.Series([A, B])
    assert apply_skips(Keepers({}), Suppressed({}), message(), chunk, numbers).equals(
        with_failure_codes(chunk).with_columns(numbers.alias("phone_number"))
    )
    lookups, suppressed = Keepers({A: "x"}), Suppressed({A: "all"})
    invalid = built(("a", "phone number is missing"))
    assert apply_skips(lookups, suppressed, message(), invalid, pl.Series([None], dtype=pl.String))[
        "failure_code"
    ].to_list() == ["invalid"]
    assert lookups.asked == suppressed.asked == []


def test_an_opted_out_recipient_is_failed_saying_since_when_and_why_masked() -> None:
    suppressed = Suppressed({A: "marketing", B: "all"})
    chunk = built(("a", None), ("b", None), ("c", None))
    skipped = apply_skips(Keepers({}), suppressed, message(), chunk, pl.Series([A, B, C]))
    assert skipped["failure_code"].to_list() == ["opted_out", "opted_out", None]
    assert skipped["payload"].to_list() == [None, None, "payload-c"]
    assert skipped["failure_reason"].to_list()[:2] == [
        "opted out: suppressed for marketing since 2026-12-01 09:30:00 UTC (replied STOP to ***09)",
        "opted out: suppressed for every campaign since 2026-12-01 09:30:00 UTC "
        "(replied STOP to ***09)",
    ]
    assert suppressed.asked == [("org-1", [A, B, C], "marketing")]


def test_a_utility_campaign_skips_only_numbers_suppressed_for_all() -> None:
    suppressed = Suppressed({A: "marketing", B: "all"})
    chunk = built(("a", None), ("b", None))
    skipped = apply_skips(Keepers({}), suppressed, message("utility"), chunk, pl.Series([A, B]))
    assert skipped["failure_code"].to_list() == [None, "opted_out"]


def test_duplicate_comes_before_opted_out() -> None:
    """The keeper opted out: it is opted_out, its duplicate a duplicate of it."""
    chunk = built(("a", None), ("b", None))
    skipped = apply_skips(
        Keepers({A: "a"}), Suppressed({A: "all"}), message(), chunk, pl.Series([A, A])
    )
    assert skipped["failure_code"].to_list() == ["opted_out", "duplicate"]


def test_a_reason_of_several_lines_is_one_line() -> None:
    frame = pl.DataFrame(
        [(A, "all", "line one\nline two", SINCE)], schema=MATCH_SCHEMA, orient="row"
    )
    (reason,) = opted_out_reasons(frame)["reason"].to_list()
    assert "\n" not in reason and reason.endswith("(line one line two)")


class Flaky(Suppressed):
    """`added_for_pending` fails while `down`, else answers with the suppressions."""

    def __init__(self, scopes: dict[str, str]) -> None:
        super().__init__(scopes)
        self.down = False
        self.looks = 0
        self.since: list[datetime | None] = []

    def added_for_pending(
        self,
        organization_id: str,
        campaign_id: str,
        category: str,
        since: datetime | None = None,
    ) -> tuple[pl.DataFrame, datetime]:
        self.looks += 1
        self.since.append(since)
        if self.down:
            raise sa.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))
        now = SINCE + timedelta(minutes=self.looks)
        return self.matching(organization_id, list(self.scopes), category), now


def test_the_watch_looks_at_most_every_interval_and_keeps_what_it_knew_through_an_outage() -> None:
    lookups = Flaky({A: "all"})
    watch = SuppressionWatch(lookups, message(), every=3600)
    assert set(watch.late()) == {A}
    lookups.scopes[B] = "all"
    assert set(watch.late()) == {A} and lookups.looks == 1  # not looked again yet
    watch.every = 0
    lookups.down = True
    assert set(watch.late()) == {A} and lookups.looks == 2
    lookups.down = False
    assert set(watch.late()) == {A, B}
    # The first look reaches back the store's overlap; each later one from the look before
    # last (the database's time) less that overlap.
    assert lookups.since == [
        None,
        SINCE + timedelta(minutes=1) - COMMIT_OVERLAP,
        SINCE + timedelta(minutes=1) - COMMIT_OVERLAP,
    ]


def test_a_campaign_is_marketing_unless_it_names_another_known_category() -> None:
    assert [category_of(c) for c in (None, "", "promo", "Utility", "marketing")] == [
        "marketing"
    ] * 5
    assert category_of("utility") == "utility"
    assert category_of("authentication") == "authentication"
