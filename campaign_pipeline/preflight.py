"""The preflight guard: before a campaign's first send, count its invalid recipients.

A bad data load (phone numbers without their '+', a template naming a missing attribute) shows
as a campaign most of whose recipients are invalid. Counting them first, with the same
`build_payloads` a run uses, lets the run hold the campaign back instead of sending the few
valid ones and failing the rest. No Dagster here; the claim op applies the verdict.

Up to `EXACT_UP_TO` pending recipients every one is counted. Above that a sample of
`SAMPLE_SLICES` slices spread evenly over the campaign (by audience id) is: reading a million
recipients costs ~3.5 s here, a fifth of the send it guards, where the bound is a tenth; a
100,000 sample puts the fraction within about half a percent.
"""

from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import polars as pl

from campaign_pipeline.payloads import CampaignMessage, build_payloads

# Top reasons named in the verdict.
REASONS_SHOWN = 3
EXACT_UP_TO = 100_000
SAMPLE_SLICES = 20


@dataclass(frozen=True)
class PreflightCount:
    """Pending recipients and the invalid ones among them, by reason."""

    recipients: int = 0
    invalid_by_reason: Counter[str] = field(default_factory=Counter)
    # All pending recipients when `recipients` counts a sample of them.
    sampled_from: int | None = None

    @property
    def invalid(self) -> int:
        """Recipients a run would mark failed before sending."""
        return sum(self.invalid_by_reason.values())

    @property
    def fraction(self) -> float:
        """Invalid recipients as a fraction of all pending ones (0 for none)."""
        return self.invalid / self.recipients if self.recipients else 0.0

    def verdict(self, max_invalid_fraction: float) -> str | None:
        """Why the campaign must not be sent, in one line; None when it may.

        `max_invalid_fraction` of 1 or more never holds a campaign back.
        """
        if max_invalid_fraction >= 1 or self.fraction <= max_invalid_fraction:
            return None
        reasons = ", ".join(
            f"{reason} {count}"
            for reason, count in self.invalid_by_reason.most_common(REASONS_SHOWN)
        )
        counted = (
            f"{self.invalid} of {self.recipients} recipients ({self.fraction:.0%}) are invalid"
            if self.sampled_from is None
            else f"{self.invalid} of a sample of {self.recipients} of {self.sampled_from} "
            f"recipients ({self.fraction:.0%}) are invalid"
        )
        return f"{counted}: {reasons} (at most {max_invalid_fraction:.0%} may be)"


def _invalid_by_reason(built: pl.DataFrame) -> Counter[str]:
    counts = built.filter(pl.col("failure_reason").is_not_null()).group_by("failure_reason").len()
    return Counter(dict(counts.iter_rows()))


def count_invalid(
    message: CampaignMessage,
    chunks: Iterable[pl.DataFrame],
    max_message_bytes: int,
    sampled_from: int | None = None,
) -> PreflightCount:
    """Build every chunk's payloads as a run would and count the invalid recipients.

    Chunks are built on a thread while the next one is read (a COPY and Polars, both mostly
    outside the GIL), so the count costs about one pass over the recipients.
    """
    recipients = 0
    invalid: Counter[str] = Counter()
    with ThreadPoolExecutor(1, thread_name_prefix="preflight") as builder:
        pending = None
        for chunk in chunks:
            if pending is not None:
                built = pending.result()
                recipients += built.height
                invalid += _invalid_by_reason(built)
            pending = builder.submit(build_payloads, message, chunk, max_message_bytes)
        if pending is not None:
            built = pending.result()
            recipients += built.height
            invalid += _invalid_by_reason(built)
    return PreflightCount(recipients, invalid, sampled_from)
