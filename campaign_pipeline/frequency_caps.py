"""The frequency cap: at most N marketing messages per person and organization within a duration.

Written `N/DURATION` (`1/24h`, `3/7d`, `2/90s`). `CAMPAIGN_FREQUENCY_CAP` is everyone's default;
an organization may have its own, or `off` (`campaign-pipeline frequency-cap set`). It holds
for marketing campaigns only (`categories.category_of`).
"""

import re
from dataclasses import dataclass

from campaign_pipeline.durations import DURATION_FORM, duration_seconds

# An organization's override that turns the default off for it.
OFF = "off"
CAP_FORM = f"N/DURATION: N a positive integer, DURATION {DURATION_FORM}; e.g. 1/24h"
_CAP = re.compile(r"([1-9][0-9]{0,8})/(.*)")


@dataclass(frozen=True)
class FrequencyCap:
    """At most `messages` marketing messages to one number within `seconds`."""

    messages: int
    seconds: int
    text: str

    def __str__(self) -> str:
        return self.text

    @property
    def window(self) -> str:
        """The duration as written (`24h` of `1/24h`)."""
        return self.text.partition("/")[2]

    def refusal(self) -> str:
        """The one-line reason a recipient the cap holds back is failed with."""
        plural = "" if self.messages == 1 else "s"
        return (
            f"frequency capped: the number already had {self.messages} marketing "
            f"message{plural} from the organization within {self.window} (cap {self.text})"
        )


def parse_frequency_cap(text: str) -> FrequencyCap:
    """The cap `text` says (`3/7d`).

    Raises:
        ValueError: `text` is not `N/DURATION`, said in one line.
    """
    match = _CAP.fullmatch(text.strip())
    try:
        if match is None:
            raise ValueError
        seconds = duration_seconds(match[2])
    except ValueError:
        raise ValueError(f"a frequency cap must be {CAP_FORM}, not {text!r}") from None
    return FrequencyCap(int(match[1]), seconds, f"{match[1]}/{match[2].strip()}")


def effective_cap(
    override: str | None, default: FrequencyCap | None
) -> tuple[FrequencyCap | None, str]:
    """The cap that holds for an organization, and where it comes from.

    `override` is the organization's own (`organizations.frequency_cap`): a cap, `off`, or None
    for the default. The source is `organization` or `default` (`CAMPAIGN_FREQUENCY_CAP`).
    """
    if override is None:
        return default, "default"
    if override == OFF:
        return None, "organization"
    return parse_frequency_cap(override), "organization"
