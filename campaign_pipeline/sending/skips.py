"""Valid recipients a send does not queue, decided a chunk at a time, set-based.

A built chunk (`payloads.build_payloads`: `id`, `payload`, `failure_reason`) gets a
`failure_code`: `invalid` where the builder gave a reason, then `duplicate` for a recipient
whose number another recipient of the campaign has and is sent to (the one already queued, else
the smallest audience id: the rule reads only the audience table, so every chunk, shard,
executor, resume and rerun decides the same), then `opted_out` for a number its organization
suppressed for the campaign's category, then `frequency_capped` for a number the frequency cap
holds back (`sending.frequency`). The first code that applies is kept
(`failure_codes.SKIP_ORDER`). `SuppressionWatch` catches suppressions added while the chunk is
being sent. Free of Dagster.
"""

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import polars as pl
import sqlalchemy as sa

from campaign_pipeline.failure_codes import FailureCode
from campaign_pipeline.frequency_caps import FrequencyCap
from campaign_pipeline.payloads import CampaignMessage
from campaign_pipeline.privacy import mask_phone_numbers
from campaign_pipeline.store.suppressions import COMMIT_OVERLAP
from campaign_pipeline.text import one_line

_MATCH = "_match"
# How often a send looks for suppressions added while it sends.
LOOK_EVERY_SECONDS = 0.5
_OPT_OUT_SCHEMA = {"phone_number": pl.String, "reason": pl.String}
_CAPPED_SCHEMA = {"phone_number": pl.String, _MATCH: pl.Boolean}

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
    return _fail_by_number(
        built,
        phone_numbers,
        keepers.rename({"keeper": _MATCH}),
        FailureCode.DUPLICATE,
        reason=pl.format("duplicate of recipient {} (the same phone number)", pl.col(_MATCH)),
        applies=pl.col(_MATCH) != pl.col("id"),
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
    return _fail_by_number(
        built,
        phone_numbers,
        reasons.rename({"reason": _MATCH}),
        FailureCode.OPTED_OUT,
        reason=pl.col(_MATCH),
    )


def skip_frequency_capped(
    built: pl.DataFrame, capped: Collection[str], cap: FrequencyCap
) -> pl.DataFrame:
    """Fail, as `frequency_capped`, each recipient not failed yet whose number is in `capped`.

    `built` has `phone_number` (`apply_skips`). Rows keep their order.
    """
    return _fail_by_number(
        built,
        built["phone_number"],
        pl.DataFrame({"phone_number": list(capped), _MATCH: True}, schema=_CAPPED_SCHEMA),
        FailureCode.FREQUENCY_CAPPED,
        reason=pl.lit(cap.refusal()),
    )


def _fail_by_number(
    built: pl.DataFrame,
    phone_numbers: pl.Series,
    by_number: pl.DataFrame,
    code: FailureCode,
    reason: pl.Expr,
    applies: pl.Expr | None = None,
) -> pl.DataFrame:
    """Fail with `code` each recipient not failed yet whose number `by_number` holds.

    `by_number` has `phone_number` and `_MATCH`, which `reason` and `applies` (a further
    condition) may read. Rows keep their order.
    """
    if by_number.is_empty():
        return built
    match = (
        pl.DataFrame({"phone_number": phone_numbers})
        .join(by_number, on="phone_number", how="left", maintain_order="left")
        .get_column(_MATCH)
    )
    fail = pl.col("failure_code").is_null() & pl.col(_MATCH).is_not_null()
    if applies is not None:
        fail = fail & applies
    return (
        built.with_columns(match)
        .with_columns(
            pl.when(fail).then(None).otherwise(pl.col("payload")).alias("payload"),
            pl.when(fail).then(reason).otherwise(pl.col("failure_reason")).alias("failure_reason"),
            pl.when(fail)
            .then(pl.lit(code.value))
            .otherwise(pl.col("failure_code"))
            .alias("failure_code"),
        )
        .drop(_MATCH)
    )


class SuppressionLookups(Protocol):
    """What the opt-out skip reads (`store.suppressions.Suppressions`)."""

    def matching(
        self, organization_id: str, phone_numbers: Sequence[str], category: str
    ) -> pl.DataFrame:
        """Of the numbers, those suppressed for a campaign of `category`."""
        ...

    def added_for_pending(
        self,
        organization_id: str,
        campaign_id: str,
        category: str,
        since: datetime | None = None,
    ) -> tuple[pl.DataFrame, datetime]:
        """Suppressions created since then of the campaign's pending numbers; the time now."""
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
    `late()` gives the campaign's pending numbers suppressed since (the database's clock) the
    look before last, less the store's commit overlap, so the batches handed out after a look
    leave them out. Each look reads only recent suppressions of this campaign's numbers.
    """

    suppressions: SuppressionLookups
    message: CampaignMessage
    every: float = LOOK_EVERY_SECONDS
    reasons: dict[str, str] = field(default_factory=dict)
    _looked: float | None = None
    _since: datetime | None = None

    def late(self) -> dict[str, str]:
        """Number -> reason, for every suppression of a pending number seen since the start."""
        now = time.monotonic()
        if self._looked is None or now - self._looked >= self.every:
            self._looked = now
            try:
                added, looked_at = self.suppressions.added_for_pending(
                    self.message.organization_id,
                    self.message.campaign_id,
                    self.message.category,
                    self._since,
                )
            except sa.exc.SQLAlchemyError:
                # The database is unreachable: the next outcome write fails and stops the
                # send, saying so; until then, what was known holds, and it is asked again.
                return self.reasons
            self.reasons.update(dict(opted_out_reasons(added).iter_rows()))
            # A transaction's rows carry its start time, and it may commit later.
            self._since = looked_at - COMMIT_OVERLAP
        return self.reasons
