"""Durations as people write them in settings and commands: an integer with s, m, h or d.

`90s`, `15m`, `24h`, `7d`: one form everywhere (the frequency cap, WhatsApp's limit window).
"""

import re

_DURATION = re.compile(r"([1-9][0-9]{0,8})([smhd])")
_SECONDS_PER_UNIT = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
DURATION_FORM = "a positive integer with s, m, h or d (90s, 15m, 24h, 7d)"


def duration_seconds(text: str) -> int:
    """The seconds `text` says (`24h` -> 86400).

    Raises:
        ValueError: `text` is not a positive integer followed by s, m, h or d.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"a duration must be {DURATION_FORM}, not {text!r}")
    return int(match[1]) * _SECONDS_PER_UNIT[match[2]]
