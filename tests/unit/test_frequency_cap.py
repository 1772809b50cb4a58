"""The frequency cap: its notation, which cap holds, and a send's places under it (SQLite store,
the in-memory SQS client of `test_shard_send`)."""

import pytest

from campaign_pipeline.durations import duration_seconds
from campaign_pipeline.errors import SendInterrupted, SettingsError
from campaign_pipeline.frequency_caps import effective_cap, parse_frequency_cap
from campaign_pipeline.payloads import CampaignMessage
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.sending.frequency import frequency_cap_for
from campaign_pipeline.sending.stop import StopSignal
from tests.support.campaigns import add_recipients, add_template_campaign
from tests.unit.test_shard_send import (
    CALLS_IN_FLIGHT,
    FakeSqsClient,
    claimed_send,
    codes,
    recorded,
    run_in_thread,
    wait_for,
)

ONE_PER_HOUR = parse_frequency_cap("1/1h")


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("24h", 86_400), ("7d", 604_800)]
)
def test_durations_are_an_integer_with_s_m_h_or_d(text: str, seconds: int) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "0h", "-1h", "1.5h", "1w", "h", "24 h", "\uff11h"])
def test_anything_else_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="90s, 15m, 24h, 7d"):
        duration_seconds(text)


def test_a_cap_is_n_slash_duration() -> None:
    cap = parse_frequency_cap(" 3/7d ")
    assert (cap.messages, cap.seconds, cap.text, cap.window) == (3, 604_800, "3/7d", "7d")
    assert cap.refusal() == (
        "frequency capped: the number already had 3 marketing messages from the "
        "organization within 7d (cap 3/7d)"
    )


@pytest.mark.parametrize("text", ["1", "0/24h", "1/", "/24h", "1/24", "a/24h", "1/24h/2", "off"])
def test_anything_else_is_not_a_cap(text: str) -> None:
    with pytest.raises(ValueError, match="N/DURATION"):
        parse_frequency_cap(text)


def test_an_organizations_own_cap_wins_over_the_default_and_off_turns_it_off() -> None:
    default = parse_frequency_cap("1/24h")
    assert effective_cap(None, default) == (default, "default")
    assert effective_cap("2/7d", default) == (parse_frequency_cap("2/7d"), "organization")
    assert effective_cap("off", default) == (None, "organization")
    assert effective_cap(None, None) == (None, "default")


class OwnCaps:
    def __init__(self, caps: dict[str, str]) -> None:
        self.caps = caps

    def frequency_cap(self, organization_id: str) -> str | None:
        return self.caps.get(organization_id)


def message(category: str, organization_id: str = "org-1") -> CampaignMessage:
    return CampaignMessage(
        campaign_id="c",
        organization_id=organization_id,
        message_type="text",
        message_content="hi",
        category=category,
    )


def test_only_marketing_campaigns_are_capped() -> None:
    caps = OwnCaps({"org-2": "3/1d", "org-3": "off", "org-4": "nonsense"})
    default = parse_frequency_cap("1/24h")
    assert frequency_cap_for(caps, message("marketing"), default) == default
    assert frequency_cap_for(caps, message("utility"), default) is None
    assert frequency_cap_for(caps, message("authentication"), default) is None
    assert frequency_cap_for(caps, message("marketing", "org-2"), default).text == "3/1d"
    assert frequency_cap_for(caps, message("marketing", "org-3"), default) is None
    with pytest.raises(SettingsError, match="organization org-4's frequency cap"):
        frequency_cap_for(caps, message("marketing", "org-4"), default)


@pytest.fixture
def store(tmp_path) -> CampaignStore:
    store = CampaignStore(database_url=f"sqlite:///{tmp_path / 'campaigns.db'}")
    store.create_schema()
    return store


def capped_campaign(store: CampaignStore, recipients: int) -> tuple[str, list[str]]:
    """A marketing campaign of org-1 to numbers +15550000000...; its recipient ids in order."""
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, recipients)
    return campaign_id, sorted(recorded(store, campaign_id))


def numbers(store: CampaignStore, campaign_id: str) -> list[str]:
    """The campaign's numbers in the order it sends them (by recipient id)."""
    with store.engine.connect() as connection:
        return list(
            connection.exec_driver_sql(
                "SELECT phone_number FROM campaign_audience WHERE campaign_id = ? ORDER BY id",
                (campaign_id,),
            ).scalars()
        )


def send_capped(store: CampaignStore, client: FakeSqsClient, campaign_id: str, **options):
    return claimed_send(
        store,
        client,
        campaign_id,
        run_id=f"run-{campaign_id[:8]}",
        marketing_sends=store.marketing_sends,
        frequency_cap=ONE_PER_HOUR,
        recipients_per_chunk=50,
        outcomes_per_write=10,
        **options,
    )


def numbers_queued(store: CampaignStore, campaign_id: str) -> set[str]:
    with store.engine.connect() as connection:
        return set(
            connection.exec_driver_sql(
                "SELECT phone_number FROM campaign_audience "
                "WHERE campaign_id = ? AND status = 'ready_to_send'",
                (campaign_id,),
            ).scalars()
        )


def test_a_number_at_the_cap_is_failed_as_frequency_capped_with_the_cap_in_its_reason(
    store: CampaignStore,
) -> None:
    first, _ = capped_campaign(store, 120)
    assert send_capped(store, FakeSqsClient(), first).run().queued == 120
    second, _ = capped_campaign(store, 130)
    stats = send_capped(store, FakeSqsClient(), second).run()
    assert (stats.queued, stats.failed_by_code) == (10, {"frequency_capped": 120})
    assert stats.failed_by_reason == {ONE_PER_HOUR.refusal(): 120}
    assert set(codes(store, second).values()) == {None, "frequency_capped"}
    assert numbers_queued(store, first).isdisjoint(numbers_queued(store, second))


def test_places_of_entries_sqs_refused_are_given_back(store: CampaignStore) -> None:
    first, ids = capped_campaign(store, 60)
    refused = frozenset(ids[:2] + ids[55:57])
    assert send_capped(store, FakeSqsClient(refuse=refused), first).run().queued == 56
    second, _ = capped_campaign(store, 60)
    assert send_capped(store, FakeSqsClient(), second).run().queued == 4
    in_order = numbers(store, first)
    assert numbers_queued(store, second) == {in_order[i] for i in (0, 1, 55, 56)}


def test_places_of_recipients_a_stop_left_pending_are_given_back(store: CampaignStore) -> None:
    """Those of the batches never handed out, and of the next chunk already prepared."""
    client = FakeSqsClient(hold_after=5)
    first, _ = capped_campaign(store, 300)
    stop = StopSignal()
    result = run_in_thread(send_capped(store, client, first), stop)
    wait_for(lambda: client.in_flight >= CALLS_IN_FLIGHT, "calls held in flight")
    stop.stop("paused")
    client.gate.set()
    queued = result().queued
    assert 0 < queued < 300
    second, _ = capped_campaign(store, 300)
    assert send_capped(store, FakeSqsClient(), second).run().queued == 300 - queued


def test_a_failed_chunk_keeps_its_places_and_the_campaign_takes_them_back_when_resumed(
    store: CampaignStore,
) -> None:
    """SQS may hold the failed calls' messages: nobody else gets those numbers until the
    campaign itself sends on; chunks prepared after it are given back."""
    first, _ = capped_campaign(store, 200)
    with pytest.raises(SendInterrupted):
        send_capped(store, FakeSqsClient(fail_call=3), first).run()
    second, _ = capped_campaign(store, 200)
    assert send_capped(store, FakeSqsClient(), second).run().queued == 150
    first_chunk = set(numbers(store, first)[:50])
    assert numbers_queued(store, second) == set(numbers(store, first)) - first_chunk
    resumed = send_capped(store, FakeSqsClient(), first).run()
    assert len(numbers_queued(store, first)) == 50
    assert resumed.failed_by_code == {"frequency_capped": 150}
