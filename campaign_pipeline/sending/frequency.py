"""The frequency cap in a send: which cap holds, and a shard's reservations under it.

A marketing campaign's recipients are reserved a chunk at a time, as the chunk is prepared
(after every other skip, so a recipient skipped for another reason takes no place). Those the
cap refuses are failed `frequency_capped`. When a chunk has been sent, the places of its
recipients SQS did not accept (refused, suppressed late, or never handed out after a stop)
are given back; so are those of chunks prepared but never sent. A chunk whose send failed
keeps its places: SQS may have taken its unconfirmed messages, and a resumed send of the
same campaign takes them over. Free of Dagster.
"""

import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import polars as pl

from campaign_pipeline.categories import DEFAULT_CATEGORY
from campaign_pipeline.errors import SettingsError
from campaign_pipeline.frequency_caps import FrequencyCap, effective_cap
from campaign_pipeline.payloads import CampaignMessage
from campaign_pipeline.sending.skips import skip_frequency_capped


class OrganizationSettings(Protocol):
    """Where an organization's own cap is (`store.organizations.Organizations`)."""

    def frequency_cap(self, organization_id: str) -> str | None:
        """The organization's own cap (`N/DURATION` or `off`); None: the default holds."""
        ...


class MarketingSendLookups(Protocol):
    """The cap's memory (`store.marketing_sends.MarketingSends`)."""

    def reserve(
        self,
        organization_id: str,
        campaign_id: str,
        cap: FrequencyCap,
        phone_numbers: Iterable[str],
    ) -> set[str]:
        """Reserve a message to each number the cap allows one more; returns those numbers."""
        ...

    def release(self, organization_id: str, campaign_id: str, phone_numbers: Iterable[str]) -> None:
        """Give back the campaign's reservations of numbers it did not queue."""
        ...

    def over_cap(
        self,
        organization_id: str,
        campaign_id: str,
        cap: FrequencyCap,
        phone_numbers: Sequence[str],
    ) -> set[str]:
        """Of the numbers, those the cap allows no more messages now (nothing is reserved)."""
        ...

    def count_history(self, organization_id: str, cap: FrequencyCap) -> None:
        """Make sure the organization's marketing messages the cap looks at are counted."""
        ...

    def forget_history(self, organization_id: str) -> None:
        """A marketing send without a cap is not recorded: the memory is no longer complete."""
        ...


def frequency_cap_for(
    settings: OrganizationSettings, message: CampaignMessage, default: FrequencyCap | None
) -> FrequencyCap | None:
    """The cap that holds for the campaign: none unless it is marketing.

    Raises:
        SettingsError: the organization's own cap is unreadable (written past the command).
    """
    if message.category != DEFAULT_CATEGORY:
        return None
    own = settings.frequency_cap(message.organization_id)
    try:
        cap, _ = effective_cap(own, default)
    except ValueError as error:
        raise SettingsError(
            f"organization {message.organization_id}'s frequency cap: {error}"
        ) from None
    return cap


def cap_for_sending(
    settings: OrganizationSettings,
    sends: MarketingSendLookups,
    message: CampaignMessage,
    default: FrequencyCap | None,
) -> FrequencyCap | None:
    """`frequency_cap_for`, with the cap's memory made ready for this send.

    With a cap, the organization's marketing messages of the cap's window are counted first;
    a marketing send without one is not recorded, so the memory is marked incomplete.
    """
    cap = frequency_cap_for(settings, message, default)
    if cap is not None:
        sends.count_history(message.organization_id, cap)
    elif message.category == DEFAULT_CATEGORY:
        sends.forget_history(message.organization_id)
    return cap


@dataclass
class CapReservations:
    """One shard's places under the frequency cap, chunk by chunk."""

    sends: MarketingSendLookups
    message: CampaignMessage
    cap: FrequencyCap
    # Numbers reserved for each chunk prepared and not yet being sent, oldest first.
    _unsent: deque[set[str]] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reserve(self, built: pl.DataFrame) -> pl.DataFrame:
        """`built` (skips decided, `phone_number` a column) with what the cap refuses failed."""
        numbers = built.filter(pl.col("failure_code").is_null())["phone_number"]
        granted = self.sends.reserve(
            self.message.organization_id,
            self.message.campaign_id,
            self.cap,
            numbers.to_list(),
        )
        with self._lock:
            self._unsent.append(granted)
        if len(granted) == numbers.len():
            return built
        return skip_frequency_capped(built, set(numbers.to_list()) - granted, self.cap)

    def sending(self) -> None:
        """The oldest prepared chunk is being sent: its places are the send's to settle."""
        with self._lock:
            self._unsent.popleft()

    def sent(self, valid: pl.DataFrame, accepted_ids: list[str]) -> None:
        """A chunk was sent to the end: give back the places of what SQS did not accept.

        `valid` is what was to be sent (`id`, `phone_number`), `accepted_ids` what SQS took.
        """
        if len(accepted_ids) == valid.height:
            return
        unsent = valid.filter(~pl.col("id").is_in(accepted_ids))["phone_number"]
        self.sends.release(self.message.organization_id, self.message.campaign_id, unsent)

    def release_unsent(self) -> None:
        """Give back the places of every chunk prepared but never sent."""
        with self._lock:
            numbers = set().union(*self._unsent)
            self._unsent.clear()
        self.sends.release(self.message.organization_id, self.message.campaign_id, numbers)
