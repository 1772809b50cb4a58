"""Valid recipients a send does not queue, decided a chunk at a time, set-based.

A built chunk (`payloads.build_payloads`: `id`, `payload`, `failure_reason`) gets a
`failure_code`: `invalid` where the builder gave a reason, then `duplicate` for a recipient
whose number another recipient of the campaign has and is sent to (the one already queued, else
the smallest audience id). The rule reads only the audience table, so every chunk, shard,
executor, resume and rerun decides the same. The first code that applies is kept
(`failure_codes.SKIP_ORDER`). Free of Dagster.
"""

from collections.abc import Sequence
from typing import Protocol

import polars as pl

from campaign_pipeline.failure_codes import FailureCode

_KEEPER = "_keeper"

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


def apply_skips(
    lookups: SkipLookups, campaign_id: str, built: pl.DataFrame, phone_numbers: pl.Series
) -> pl.DataFrame:
    """`built` with every skip decided: `failure_code` set, `payload` null, where one applies."""
    coded = with_failure_codes(built)
    valid_numbers = phone_numbers.filter(coded["failure_code"].is_null())
    if valid_numbers.is_empty():
        return coded
    keepers = lookups.number_keepers(campaign_id, valid_numbers.unique().to_list())
    return skip_duplicates(coded, phone_numbers, keepers)
