"""The guards between a claimed campaign and harm: what a run checks before and while it sends.

- `check_sendable`: the campaign's own definition, its rate cap and its audience (never empty);
  `failing_unsendable` fails a campaign that can never be sent.
- `preflight` and `exact_preflight`: before a campaign's first send, count its invalid
  recipients (at the claim for a sample of a large campaign; in the send step itself, from
  the very payloads it is about to send, for one counted exactly).
- `hold_back_for_rejections`: SQS refusing more than CAMPAIGN_MAX_REJECTED entries for good
  in a send holds the campaign back (the send stops as for a pause, then this pauses it).

The preflight guard:

A bad data load (phone numbers without their '+', a template naming a missing attribute) shows
as a campaign most of whose recipients are invalid. Counting them first, with the same
`build_payloads` a run uses, lets the run hold the campaign back instead of sending the few
valid ones and failing the rest.

Up to `EXACT_UP_TO` pending recipients every one is counted. Above that a sample of
`SAMPLE_SLICES` slices spread evenly over the campaign (by audience id) is: a 100,000 sample
puts the fraction within about half a percent, at a small part of the send's cost.
"""

from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import polars as pl

from campaign_pipeline.errors import CampaignDefinitionError, CampaignHeldBack
from campaign_pipeline.failure_codes import FailureCode
from campaign_pipeline.payloads import CampaignMessage, build_payloads, check_campaign_message
from campaign_pipeline.sending.lease import Lease
from campaign_pipeline.sending.pacing import check_rate
from campaign_pipeline.sending.stats import SendStats
from campaign_pipeline.store.audience import Audience
from campaign_pipeline.store.claims import Claims
from campaign_pipeline.store.records import Claim

# Payloads are sized against SQS's largest message at the claim, which needs no SQS: the send
# still holds each to the queue's own limit.
SQS_MAX_MESSAGE_BYTES = 1_048_576
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


def defers_to_the_send(pending: int, recipients_per_shard: int) -> bool:
    """Whether the campaign is counted exactly, by the one send step that sends it all.

    That step reads and builds every payload anyway: counting them there, before the first
    batch, costs nothing more, where a count at the claim would read and build them twice.
    """
    return pending <= min(EXACT_UP_TO, recipients_per_shard)


def _invalid_by_reason(built: pl.DataFrame) -> Counter[str]:
    invalid = pl.col("failure_reason").is_not_null()
    if "failure_code" in built.columns:  # skipped for another reason: not invalid
        invalid = pl.col("failure_code") == FailureCode.INVALID.value
    counts = built.filter(invalid).group_by("failure_reason").len()
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


@contextmanager
def failing_unsendable(claims: Claims, campaign_id: str) -> Iterator[None]:
    """Mark the campaign failed when what runs inside finds it can never be sent.

    Raises:
        CampaignDefinitionError: why, naming the campaign, after it was failed.
    """
    try:
        yield
    except CampaignDefinitionError as error:
        claims.fail(campaign_id, str(error))
        raise CampaignDefinitionError(f"campaign {campaign_id} cannot be sent: {error}") from None


def check_sendable(claim: Claim, default_cap: float | None) -> float | None:
    """The campaign's rate cap, once its definition and audience are known to be sendable.

    The cap is the campaign's `max_messages_per_second`, else `default_cap`.

    Raises:
        CampaignDefinitionError: an unknown message type, a malformed placeholder or cap, or
            no recipients at all (a mistake upstream, not a success to report as "0 queued").
    """
    check_campaign_message(claim.message)
    if not any(claim.counts.values()):
        raise CampaignDefinitionError("campaign has no recipients")
    if claim.max_messages_per_second is None:
        return default_cap
    return _stored_rate(claim.max_messages_per_second)


def _stored_rate(value: float) -> float:
    try:
        return check_rate(float(value), "max_messages_per_second")
    except (TypeError, ValueError) as error:
        raise CampaignDefinitionError(str(error)) from None


def preflight(
    audience: Audience, lease: Lease, message: CampaignMessage, pending: int, max_invalid: float
) -> PreflightCount | None:
    """Count the invalid pending recipients; hold the campaign back if there are too many.

    None when the guard is off (`max_invalid` of 1 or more).

    Raises:
        CampaignHeldBack: the campaign was paused with the verdict as its last error.
    """
    if max_invalid >= 1:
        return None
    chunks, sampled = audience.preflight_chunks(
        lease.campaign_id, pending, EXACT_UP_TO, SAMPLE_SLICES
    )
    counted = count_invalid(message, chunks, SQS_MAX_MESSAGE_BYTES, pending if sampled else None)
    _hold_back_on_verdict(lease, counted, max_invalid)
    return counted


def exact_preflight(lease: Lease, built: list[pl.DataFrame], max_invalid: float) -> PreflightCount:
    """Count the invalid among every pending recipient's payload, built; hold back on too many.

    Raises:
        CampaignHeldBack: the campaign was paused with the verdict as its last error.
    """
    invalid: Counter[str] = Counter()
    for chunk in built:
        invalid += _invalid_by_reason(chunk)
    counted = PreflightCount(sum(chunk.height for chunk in built), invalid)
    _hold_back_on_verdict(lease, counted, max_invalid)
    return counted


def _hold_back_on_verdict(lease: Lease, counted: PreflightCount, max_invalid: float) -> None:
    verdict = counted.verdict(max_invalid)
    if verdict is not None:
        lease.hold_back(verdict, f"preflight guard: run {lease.run_id}")
        raise CampaignHeldBack(
            f"campaign {lease.campaign_id} held back, nothing sent: {verdict}. Fix the "
            "recipients and resume it, or `resume --accept-invalid` to send the valid ones"
        )


def top_codes(stats: SendStats) -> str:
    """The error codes SQS refused most entries with, and how many each."""
    return ", ".join(f"{code} {count}" for code, count in stats.rejected_by_code.most_common(3))


def hold_back_for_rejections(lease: Lease, stats: SendStats, max_rejected: int) -> None:
    """Pause the campaign SQS keeps refusing, with the top codes as its last error.

    Raises:
        CampaignHeldBack: always, once the campaign is paused (its counts moved with every
            outcome write; the other shards see the pause).
    """
    bound = f"more than CAMPAIGN_MAX_REJECTED ({max_rejected}): {top_codes(stats)}"
    lease.hold_back(
        f"SQS refused {stats.rejected} messages for good in run {lease.run_id}, {bound}",
        f"rejection guard: run {lease.run_id}",
    )
    raise CampaignHeldBack(
        f"campaign {lease.campaign_id} held back: SQS refused {stats.rejected} messages for "
        f"good, {bound}. Every outcome so far is recorded; the rest stay pending",
        stats,
    )
