"""Valid recipients a send does not queue, decided a chunk at a time, set-based.

A built chunk (`payloads.build_payloads`: `id`, `payload`, `failure_reason`) gets a
`failure_code`: `invalid` where the builder gave a reason, then `duplicate` for a recipient
whose number another recipient of the campaign has and is sent to (the one already queued, else
the smallest audience id). The rule reads only the audience table, so every chunk, shard,
executor, resume and rerun decides the same. The first code that applies is kept
(`failure_codes.SKIP_ORDER`). Free of Dagster.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import polars as pl
import sqlalchemy as sa

from campaign_pipeline.clock import utcnow
from campaign_pipeline.failure_codes import FailureCode
from campaign_pipeline.payloads import CampaignMessage
from campaign_pipeline.privacy import mask_phone_numbers
from campaign_pipeline.text import one_line

_KEEPER = "_keeper"
# How often a send looks for suppressions added while it sends, and how far before its start.
LOOK_EVERY_SECONDS = 0.5
CLOCK_MARGIN = timedelta(minutes=5)
_OPT_OUT = "_opted_out"
_OPT_OUT_SCHEMA = {"phone_number": pl.String, "reason": pl.String}

# The one line a duplicate's count is shown under (each recipient's reason names its keeper).
DUPLICATE_SUMMARY = "duplicate: another recipient of the campaign has the same phone number"


class SkipLookups(Protocol):
    """What the skips read (`store.audience.Audience`)."""

    def number_keepers(self, campaign_id: str, phone_numbers: Sequence[str]) -> pl.DataFrame:
        """Numbers several recipients have (`phone_number`), with who gets them (`keeper`)."""
        ...


def with_failure_codes(built: pl.DataFrame) -> pl.DataFrame:
    """`built` with `failure_code`: `invalid` where the payload builder gave a reason."""
    return built.with_columns(
        pl.when(pl.col("failure_reason").is_not_null())
        .then(pl.lit(FailureCode.INVALID.value))
        .otherwise(pl.lit(None, dtype=pl.String))
        .alias("failure_code")
    )


def skip_duplicates(
    built: pl.DataFrame, phone_numbers: pl.Series, keepers: pl.DataFrame
) -> pl.DataFrame:
    """Fail, as `duplicate`, each valid recipient whose number goes to another recipient.

    `built` has `failure_code` (`with_failure_codes`); `phone_numbers` are its recipients'
    numbers, row for row; `keepers` is `number_keepers`' frame. Rows keep their order.
    """
    if keepers.is_empty():
        return built
    keeper = (
        pl.DataFrame({"phone_number": phone_numbers})
        .join(keepers, on="phone_number", how="left", maintain_order="left")
        .get_column("keeper")
        .alias(_KEEPER)
    )
    duplicate = (
        pl.col("failure_code").is_null()
        & pl.col(_KEEPER).is_not_null()
        & (pl.col(_KEEPER) != pl.col("id"))
    )
    return (
        built.with_columns(keeper)
        .with_columns(
            pl.when(duplicate).then(None).otherwise(pl.col("payload")).alias("payload"),
            pl.when(duplicate)
            .then(pl.format("duplicate of recipient {} (the same phone number)", pl.col(_KEEPER)))
            .otherwise(pl.col("failure_reason"))
            .alias("failure_reason"),
            pl.when(duplicate)
            .then(pl.lit(FailureCode.DUPLICATE.value))
            .otherwise(pl.col("failure_code"))
            .alias("failure_code"),
        )
        .drop(_KEEPER)
    )


def opted_out_reasons(suppressed: pl.DataFrame) -> pl.DataFrame:
    """`phone_number` and the one-line `reason` a recipient suppressed that way is failed with.

    `suppressed` is `store.suppressions.MATCH_SCHEMA`'s frame. The suppression's own reason is
    written by people and tools: it is made one line, and phone numbers in it are masked.
    """
    reasons = []
    for number, scope, reason, created_at in suppressed.iter_rows():
        scope_text = "marketing" if scope == "marketing" else "every campaign"
        line = f"opted out: suppressed for {scope_text} since {created_at:%Y-%m-%d %H:%M:%S} UTC"
        if reason:
            line += f" ({mask_phone_numbers(one_line(reason))})"
        reasons.append((number, line))
    return pl.DataFrame(reasons, schema=_OPT_OUT_SCHEMA, orient="row")


def skip_opted_out(
    built: pl.DataFrame, phone_numbers: pl.Series, reasons: pl.DataFrame
) -> pl.DataFrame:
    """Fail, as `opted_out`, each recipient not failed yet whose number is suppressed.

    `reasons` is `opted_out_reasons`' frame. Rows keep their order.
    """
    if reasons.is_empty():
        return built
    reason = (
        pl.DataFrame({"phone_number": phone_numbers})
        .join(reasons, on="phone_number", how="left", maintain_order="left")
        .get_column("reason")
        .alias(_OPT_OUT)
    )
    opted_out = pl.col("failure_code").is_null() & pl.col(_OPT_OUT).is_not_null()
    return (
        built.with_columns(reason)
        .with_columns(
            pl.when(opted_out).then(None).otherwise(pl.col("payload")).alias("payload"),
            pl.when(opted_out)
            .then(pl.col(_OPT_OUT))
            .otherwise(pl.col("failure_reason"))
            .alias("failure_reason"),
            pl.when(opted_out)
            .then(pl.lit(FailureCode.OPTED_OUT.value))
            .otherwise(pl.col("failure_code"))
            .alias("failure_code"),
        )
        .drop(_OPT_OUT)
    )


class SuppressionLookups(Protocol):
    """What the opt-out skip reads (`store.suppressions.Suppressions`)."""

    def matching(
        self, organization_id: str, phone_numbers: Sequence[str], category: str
    ) -> pl.DataFrame:
        """Of the numbers, those suppressed for a campaign of `category`."""
        ...

    def added_since(self, organization_id: str, since: datetime, category: str) -> pl.DataFrame:
        """Suppressions for a campaign of `category` created at `since` or later."""
        ...


def apply_skips(
    keepers: SkipLookups,
    suppressions: SuppressionLookups,
    message: CampaignMessage,
    built: pl.DataFrame,
    phone_numbers: pl.Series,
) -> pl.DataFrame:
    """`built` with every skip decided: `failure_code` set, `payload` null, where one applies.

    In `SKIP_ORDER`: invalid, then duplicate, then opted_out; each only where no earlier one
    applied. `phone_number` is added as a column, for the skips decided while sending.
    """
    coded = with_failure_codes(built).with_columns(phone_numbers.alias("phone_number"))
    valid_numbers = phone_numbers.filter(coded["failure_code"].is_null()).unique()
    if valid_numbers.is_empty():
        return coded
    numbers = valid_numbers.to_list()
    coded = skip_duplicates(
        coded, phone_numbers, keepers.number_keepers(message.campaign_id, numbers)
    )
    suppressed = suppressions.matching(message.organization_id, numbers, message.category)
    return skip_opted_out(coded, phone_numbers, opted_out_reasons(suppressed))


@dataclass
class SuppressionWatch:
    """Suppressions committed while a shard sends, looked up at most every `every` seconds.

    A chunk's recipients were checked when it was built, up to a chunk ahead of its batches;
    `late()` gives the numbers suppressed since the send started (minus `CLOCK_MARGIN`, for
    writers whose clocks run behind), so the batches handed out after a look leave them out.
    """

    suppressions: SuppressionLookups
    organization_id: str
    category: str
    since: datetime
    every: float = LOOK_EVERY_SECONDS
    reasons: dict[str, str] = field(default_factory=dict)
    _looked: float | None = None

    @classmethod
    def starting_now(
        cls, suppressions: SuppressionLookups, message: CampaignMessage
    ) -> "SuppressionWatch":
        """A watch for `message`'s campaign from now on."""
        since = utcnow() - CLOCK_MARGIN
        return cls(suppressions, message.organization_id, message.category, since)

    def late(self) -> dict[str, str]:
        """Number -> reason, for every suppression added since the send started."""
        now = time.monotonic()
        if self._looked is None or now - self._looked >= self.every:
            self._looked = now
            try:
                added = self.suppressions.added_since(
                    self.organization_id, self.since, self.category
                )
            except sa.exc.SQLAlchemyError:
                # The database is unreachable: the next outcome write fails and stops the
                # send, saying so; until then, what was known holds, and it is asked again.
                return self.reasons
            self.reasons.update(dict(opted_out_reasons(added).iter_rows()))
        return self.reasons
