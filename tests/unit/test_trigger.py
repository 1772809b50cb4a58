"""`services.trigger` and `services.dagster_client` without a server: header parsing, campaign
ids, the campaign checks (in `lifecycle.refusal`'s words, on SQLite), failure reasons, URLs
that are not HTTP.

The GraphQL client against loopback HTTP servers is in `tests/integration/test_trigger.py`.
"""

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from campaign_pipeline.errors import (
    CampaignNotFound,
    CampaignNotProcessable,
    CampaignScheduled,
    CampaignStopped,
    InvalidCampaignId,
    SettingsError,
)
from campaign_pipeline.lifecycle import refusal
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.services.dagster_client import (
    DagsterWebserver,
    _failure_reason,
    parse_header,
)
from campaign_pipeline.services.trigger import campaign_id_or_error, check_processable
from campaign_pipeline.store.schema import campaigns

ORGANIZATION_ID = "123e4567-e89b-12d3-a456-426614174000"


def add_campaign(store: CampaignStore, status: str = "asset_generated", pending: int = 2) -> str:
    campaign_id = store.campaigns.add(
        organization_id=ORGANIZATION_ID,
        name="t",
        status=status,
        message_type="text",
        message_content="Hi {{name}}",
    )
    store.campaigns.add_recipients(
        campaign_id, [{"phone_number": f"+1555000{i:04d}"} for i in range(pending)]
    )
    return campaign_id


def test_parse_header_splits_name_and_value() -> None:
    """`Name: value` with spaces around; a value may itself contain colons."""
    assert parse_header("Authorization: Bearer a:b") == ("Authorization", "Bearer a:b")
    assert parse_header(" X-Forwarded-User :me ") == ("X-Forwarded-User", "me")


@pytest.mark.parametrize("text", ["Authorization", ": value", "Bad Name: value", ""])
def test_parse_header_rejects_anything_else(text: str) -> None:
    """No colon, no name, or a name with spaces is refused."""
    with pytest.raises(ValueError, match="expected 'Name: value'"):
        parse_header(text)


def test_campaign_id_is_normalised_or_refused() -> None:
    """Upper-case UUIDs are accepted in canonical form; anything else is one error."""
    assert campaign_id_or_error("123E4567-E89B-12D3-A456-426614174001") == (
        "123e4567-e89b-12d3-a456-426614174001"
    )
    with pytest.raises(InvalidCampaignId, match="'nope' is not a UUID"):
        campaign_id_or_error("nope")


def test_check_processable_follows_the_claim_rules(sqlite_store: CampaignStore) -> None:
    """asset_generated and ready_to_launch with pending recipients pass; the rest is refused."""
    fresh = add_campaign(sqlite_store)
    resumable = add_campaign(sqlite_store, status="ready_to_launch")
    finished = add_campaign(sqlite_store, status="ready_to_launch", pending=0)
    draft = add_campaign(sqlite_store, status="draft")

    assert check_processable(sqlite_store, fresh).status == "asset_generated"
    assert check_processable(sqlite_store, resumable).pending == 2
    with pytest.raises(CampaignNotProcessable, match="with no pending recipients"):
        check_processable(sqlite_store, finished)
    with pytest.raises(
        CampaignNotProcessable, match="is 'draft'; only 'asset_generated' campaigns"
    ):
        check_processable(sqlite_store, draft)
    with pytest.raises(CampaignNotFound, match="does not exist"):
        check_processable(sqlite_store, "00000000-0000-4000-8000-000000000000")


@pytest.mark.parametrize(
    ("status", "kind"),
    [("paused", CampaignStopped), ("cancelled", CampaignStopped), ("later", CampaignScheduled)],
)
def test_check_processable_refuses_in_the_lifecycle_tables_words(
    sqlite_store: CampaignStore, status: str, kind: type[Exception]
) -> None:
    """Paused, cancelled and scheduled campaigns are refused with `lifecycle.refusal`'s error."""
    campaign_id = add_campaign(sqlite_store, "asset_generated" if status == "later" else status)
    with sqlite_store.engine.begin() as connection:
        connection.execute(
            sa.update(campaigns)
            .where(campaigns.c.id == campaign_id)
            .values(send_at=datetime.now(UTC) + timedelta(days=1), paused_by="ops")
        )
    expected = refusal(sqlite_store.campaigns.get(campaign_id))

    with pytest.raises(kind) as raised:
        check_processable(sqlite_store, campaign_id)

    assert isinstance(expected, kind) and str(raised.value) == str(expected)
    if status == "later":
        assert check_processable(sqlite_store, campaign_id, send_now=True).pending == 2


def test_failure_reason_prefers_the_failed_steps_description() -> None:
    """A step's Failure description wins over its error and the run's summary."""
    events = [
        {"__typename": "RunStartEvent"},
        {
            "__typename": "ExecutionStepFailureEvent",
            "stepKey": "claim_campaign",
            "error": {"message": "dagster...Failure: campaign x\ndoes not exist\n"},
            "failureMetadata": {"description": "campaign x\ndoes not exist"},
        },
        {"__typename": "RunFailureEvent", "message": "Steps failed: ['claim_campaign']."},
    ]
    assert _failure_reason(events) == "step claim_campaign: campaign x does not exist"
    assert _failure_reason(events[2:]) == "Steps failed: ['claim_campaign']."
    assert _failure_reason([]) is None


def test_a_url_that_is_not_http_is_refused() -> None:
    """Only http(s) URLs with a host are accepted."""
    with pytest.raises(SettingsError, match="is not an http"):
        DagsterWebserver("127.0.0.1:3000")
