"""The frequency cap: reservations in the store, the send, racing campaigns on PostgreSQL, the command."""

import time

from campaign_pipeline.frequency_caps import parse_frequency_cap
from campaign_pipeline.resources.campaign_store import CampaignStore

ORGANIZATION = "org-cap"
NUMBERS = [f"+4479460{index:05d}" for index in range(30)]


def test_a_reservation_grants_a_number_only_while_other_campaigns_have_fewer_than_n(
    store: CampaignStore,
) -> None:
    sends, cap = store.marketing_sends, parse_frequency_cap("2/1h")
    assert sends.reserve(ORGANIZATION, "a", cap, NUMBERS) == set(NUMBERS)
    assert sends.reserve(ORGANIZATION, "b", cap, NUMBERS[:20]) == set(NUMBERS[:20])
    # Two campaigns hold the first 20: a third gets only the other 10.
    assert sends.over_cap(ORGANIZATION, "c", cap, NUMBERS) == set(NUMBERS[:20])
    assert sends.reserve(ORGANIZATION, "c", cap, NUMBERS) == set(NUMBERS[20:])
    assert sends.over_cap(ORGANIZATION, "d", cap, NUMBERS) == set(NUMBERS)
    # A campaign asking again (a resumed send) keeps its own place.
    assert sends.reserve(ORGANIZATION, "a", cap, NUMBERS[:5]) == set(NUMBERS[:5])
    # Another organization's messages do not count.
    assert sends.reserve("other", "e", cap, NUMBERS) == set(NUMBERS)
    # Released, a place frees up.
    sends.release(ORGANIZATION, "b", NUMBERS[:3])
    assert sends.reserve(ORGANIZATION, "d", cap, NUMBERS[:20]) == set(NUMBERS[:3])


def test_entries_older_than_the_window_no_longer_count(store: CampaignStore) -> None:
    sends, cap = store.marketing_sends, parse_frequency_cap("1/1s")
    assert sends.reserve(ORGANIZATION, "a", cap, NUMBERS) == set(NUMBERS)
    assert sends.reserve(ORGANIZATION, "b", cap, NUMBERS) == set()
    time.sleep(1.1)
    assert sends.reserve(ORGANIZATION, "b", cap, NUMBERS) == set(NUMBERS)
