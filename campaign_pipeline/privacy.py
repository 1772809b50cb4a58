"""Phone numbers masked wherever a person reads them: logs, errors, reasons, previews.

A masked number keeps its last two digits (`***01`), enough to tell recipients apart in a log
without revealing them.
"""

import re

import polars as pl

# Not inside a longer word or hyphenated id: the digit runs of UUIDs (run and campaign ids,
# which people search logs for) and hex ids stay as they are.
_PHONE_LIKE = re.compile(r"(?<![\w-])\+?\d[\d ().-]{5,}\d(?![\w-])")


def mask_phone_numbers(text: str) -> str:
    """Replace anything that looks like a phone number with its last two digits, for logs."""
    return _PHONE_LIKE.sub(lambda match: "***" + re.sub(r"\D", "", match.group())[-2:], text)


def masked_phone_number(phone: pl.Expr) -> pl.Expr:
    """`***` and the number's last two digits, column-wise (as `mask_phone_numbers` shows it)."""
    return pl.concat_str([pl.lit("***"), phone.str.replace_all(r"\D", "").str.slice(-2)])
