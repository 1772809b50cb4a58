"""The asset_generated sensor, evaluated with `build_sensor_context` on a real campaign store."""

import dagster as dg
import pytest

from campaign_pipeline.jobs import process_campaign_messages
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.sensors import asset_generated_campaigns_sensor
from campaign_pipeline.settings import SettingsError

ORGANIZATION_ID = "123e4567-e89b-12d3-a456-426614174000"


def add_campaign(store: CampaignStore, status: str = "asset_generated") -> str:
    return store.add_campaign(
        organization_id=ORGANIZATION_ID,
        name="sensor test",
        status=status,
        message_type="text",
        message_content="Hello",
    )


def evaluate(store: CampaignStore) -> dg.SensorResult | dg.SkipReason:
    with dg.build_sensor_context(resources={"campaign_store": store}) as context:
        return asset_generated_campaigns_sensor(context)


def test_nothing_waiting_says_so(store: CampaignStore) -> None:
    """With no campaign in asset_generated the tick is skipped with a reason saying so."""
    add_campaign(store, status="draft")
    result = evaluate(store)
    assert isinstance(result, dg.SkipReason)
    assert "No campaign is in asset_generated" in result.skip_message


def test_one_run_request_per_waiting_campaign(store: CampaignStore) -> None:
    """Each waiting campaign gets a run keyed by id and version, tagged and configured."""
    campaign_id = add_campaign(store)
    (request,) = evaluate(store).run_requests
    assert request.run_key == f"{campaign_id}:v0"
    assert request.tags == {"campaign_id": campaign_id, "organization_id": ORGANIZATION_ID}
    assert request.run_config["ops"]["claim_campaign"]["config"]["campaign_id"] == campaign_id
    assert asset_generated_campaigns_sensor.job_name == process_campaign_messages.name


def test_at_most_campaign_batch_size_per_tick(
    store: CampaignStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CAMPAIGN_BATCH_SIZE bounds the run requests of one tick."""
    monkeypatch.setenv("CAMPAIGN_BATCH_SIZE", "2")
    for _ in range(5):
        add_campaign(store)
    assert len(evaluate(store).run_requests) == 2


def test_reset_campaign_gets_a_new_run_key(store: CampaignStore) -> None:
    """A campaign processed and set back to asset_generated is requested again under a new key."""
    campaign_id = add_campaign(store)
    (first,) = evaluate(store).run_requests
    store.claim(campaign_id, "run-1", lease_seconds=60)
    store.finish(campaign_id, "run-1")
    assert isinstance(evaluate(store), dg.SkipReason)
    with store.engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE campaigns SET status = 'asset_generated' WHERE id = ?"
            if store.engine.dialect.name == "sqlite"
            else "UPDATE campaigns SET status = 'asset_generated' WHERE id = %s",
            (campaign_id,),
        )
    (second,) = evaluate(store).run_requests
    assert second.run_key != first.run_key


def test_bad_campaign_batch_size_is_an_error_not_a_skip(
    sqlite_store: CampaignStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A malformed CAMPAIGN_BATCH_SIZE fails the tick with a message naming the variable."""
    monkeypatch.setenv("CAMPAIGN_BATCH_SIZE", "ten")
    with pytest.raises(SettingsError, match="CAMPAIGN_BATCH_SIZE"):
        evaluate(sqlite_store)
