"""What a valid phone number is: E.164 (`+`, then 8 to 15 digits, the first not 0).

One rule, worded once, for a recipient's payload and for a number an operator suppresses.
Valid numbers are canonical, so two recipients with the same number have the same text.
"""

from collections.abc import Sequence

import polars as pl

# ASCII digits only, not Unicode ones.
E164_PATTERN = r"^\+[1-9][0-9]{7,14}$"


def phone_number_reason(phone: pl.Expr) -> pl.Expr:
    """Why the number is not valid E.164, in one line; null when it is."""
    return (
        pl.when(phone.is_null() | (phone == ""))
        .then(pl.lit("phone number is missing"))
        .when(~phone.str.starts_with("+"))
        .then(pl.lit("phone number must start with '+' (E.164)"))
        .when(~phone.str.contains(r"^\+[0-9]+$"))
        .then(pl.lit("phone number may contain only the digits 0-9 after '+'"))
        .when(~phone.str.len_bytes().is_between(9, 16))
        .then(pl.lit("phone number must have 8 to 15 digits"))
        .when(~phone.str.contains(E164_PATTERN))
        .then(pl.lit("phone number must not start with 0 after '+'"))
    )


def phone_number_problems(numbers: Sequence[str | None]) -> list[str | None]:
    """`phone_number_reason` of each number, in order (None for a valid one)."""
    frame = pl.DataFrame({"phone": list(numbers)}, schema={"phone": pl.String})
    return frame.select(phone_number_reason(pl.col("phone")).alias("reason"))["reason"].to_list()
