"""The sensors, evaluated with `build_sensor_context` on a real campaign store.

The asset_generated sensor's run requests; the recovery sensor's scenarios that need no run (its
runs are in `test_recovery.py`); how both recovery sensors are declared.
"""

import os
import subprocess
import sys
from collections.abc import Iterator

import dagster as dg
import pytest

from campaign_pipeline.defs.jobs import process_campaign_messages
from campaign_pipeline.defs.sensors import (
    asset_generated_campaigns_sensor,
    record_campaign_run_failure,
    resume_stalled_campaigns_sensor,
)
from campaign_pipeline.defs.tags import RESUME_ATTEMPT_TAG
from campaign_pipeline.errors import SettingsError
from campaign_pipeline.resources.campaign_store import CampaignStore

ORGANIZATION_ID = "123e4567-e89b-12d3-a456-426614174000"


def add_campaign(store: CampaignStore, status: str = "asset_generated") -> str:
    return store.campaigns.add(
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
    result = evaluate(store)
    (request,) = result.run_requests
    assert request.run_key == f"{campaign_id}:v0"
    assert request.tags == {
        "campaign_id": campaign_id,
        "organization_id": ORGANIZATION_ID,
        "campaign_name": "sensor test",
    }
    assert request.run_config["ops"]["claim_campaign"]["config"]["campaign_id"] == campaign_id
    # The campaign is a partition of the job, added in the same tick as its run.
    assert request.partition_key == campaign_id
    (added,) = result.dynamic_partitions_requests
    assert (added.partitions_def_name, list(added.partition_keys)) == ("campaigns", [campaign_id])
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
    store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    store.claims.finish(campaign_id, "run-1")
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


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def stall(store: CampaignStore) -> str:
    """A campaign a crashed run left ready_to_launch with a pending recipient."""
    campaign_id = add_campaign(store)
    store.campaigns.add_recipients(campaign_id, [{"phone_number": "+15550000001"}])
    store.claims.claim(campaign_id, "crashed-run", lease_seconds=60)
    store.claims.release(campaign_id, "crashed-run")
    return campaign_id


def evaluate_recovery(
    store: CampaignStore, instance: dg.DagsterInstance
) -> dg.SensorResult | dg.SkipReason:
    with dg.build_sensor_context(instance=instance, resources={"campaign_store": store}) as context:
        return resume_stalled_campaigns_sensor(context)


def test_recovery_skips_campaigns_that_are_not_stalled(
    store: CampaignStore, instance: dg.DagsterInstance
) -> None:
    """Waiting, failed, or ready_to_launch with nothing pending: nothing to resume."""
    pending = [{"phone_number": "+15550000001"}]
    for status in ("asset_generated", "failed"):
        store.campaigns.add_recipients(add_campaign(store, status=status), pending)
    store.campaigns.add_recipients(
        add_campaign(store, status="ready_to_launch"), [pending[0] | {"status": "ready_to_send"}]
    )
    add_campaign(store, status="ready_to_launch")
    result = evaluate_recovery(store, instance)
    assert isinstance(result, dg.SkipReason)
    assert "No campaign is stalled" in result.skip_message


def test_recovery_requests_a_tagged_resume_run_per_stalled_campaign(
    store: CampaignStore, instance: dg.DagsterInstance
) -> None:
    """The resume run has the first run's config and tags, plus its attempt number."""
    campaign_id = stall(store)
    (request,) = evaluate_recovery(store, instance).run_requests
    assert request.run_key == f"{campaign_id}:v1:resume1"
    assert request.tags == {
        "campaign_id": campaign_id,
        "organization_id": ORGANIZATION_ID,
        RESUME_ATTEMPT_TAG: "1",
    }
    assert request.run_config["ops"]["claim_campaign"]["config"]["campaign_id"] == campaign_id
    assert resume_stalled_campaigns_sensor.job_name == process_campaign_messages.name


def test_recovery_waits_for_the_lease_of_a_run_this_instance_does_not_know(
    store: CampaignStore, instance: dg.DagsterInstance
) -> None:
    """A lease held by a stranger run may be live: resumed only once it expires."""
    campaign_id = add_campaign(store)
    store.campaigns.add_recipients(campaign_id, [{"phone_number": "+15550000001"}])
    store.claims.claim(campaign_id, "run-of-another-instance", lease_seconds=300)
    assert isinstance(evaluate_recovery(store, instance), dg.SkipReason)
    assert store.campaigns.get(campaign_id)["resume_attempts"] == 0

    store.claims.claim(campaign_id, "run-of-another-instance", lease_seconds=-1)  # expired
    (request,) = evaluate_recovery(store, instance).run_requests
    assert request.tags["campaign_id"] == campaign_id


def test_a_resume_never_launched_uses_up_an_attempt(
    store: CampaignStore, instance: dg.DagsterInstance
) -> None:
    """With no run to show for it, the next tick asks again under the next attempt's key."""
    stall(store)
    keys = [evaluate_recovery(store, instance).run_requests[0].run_key for _ in range(3)]
    assert [key.rsplit(":", 1)[1] for key in keys] == ["resume1", "resume2", "resume3"]
    assert isinstance(evaluate_recovery(store, instance), dg.SkipReason)


def test_recovery_acts_on_at_most_campaign_batch_size_per_tick(
    store: CampaignStore, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CAMPAIGN_BATCH_SIZE bounds the resume runs of one tick; the rest wait for the next."""
    monkeypatch.setenv("CAMPAIGN_BATCH_SIZE", "2")
    stalled = {stall(store) for _ in range(3)}
    first = {r.tags["campaign_id"] for r in evaluate_recovery(store, instance).run_requests}
    second = {r.tags["campaign_id"] for r in evaluate_recovery(store, instance).run_requests}
    assert len(first) == 2
    assert stalled - first <= second


def test_bad_max_resume_attempts_is_an_error_not_a_skip(
    sqlite_store: CampaignStore, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A malformed CAMPAIGN_MAX_RESUME_ATTEMPTS fails the tick with a message naming it."""
    monkeypatch.setenv("CAMPAIGN_MAX_RESUME_ATTEMPTS", "-1")
    with pytest.raises(SettingsError, match="CAMPAIGN_MAX_RESUME_ATTEMPTS"):
        evaluate_recovery(sqlite_store, instance)


def test_recovery_sensors_run_by_default() -> None:
    """Both start with the code location; the resume sensor every 60 s, the spec's default."""
    assert resume_stalled_campaigns_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert resume_stalled_campaigns_sensor.minimum_interval_seconds == 60
    assert record_campaign_run_failure.default_status == dg.DefaultSensorStatus.RUNNING


def test_recovery_interval_comes_from_background_job_interval() -> None:
    """BACKGROUND_JOB_INTERVAL (milliseconds) sets the resume sensor's interval (seconds)."""
    code = (
        "from campaign_pipeline.defs.sensors import resume_stalled_campaigns_sensor as s;"
        "print(s.minimum_interval_seconds)"
    )
    env = os.environ | {"BACKGROUND_JOB_INTERVAL": "15000"}
    output = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "15"


@pytest.mark.parametrize(("processes", "execution"), [("1", "in_process"), ("3", "multiprocess")])
def test_both_sensors_give_their_runs_campaign_send_processes(
    store: CampaignStore,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    processes: str,
    execution: str,
) -> None:
    """Read at every tick: the runs they request carry that many send steps at once."""
    monkeypatch.setenv("CAMPAIGN_SEND_PROCESSES", processes)
    add_campaign(store)
    stall(store)
    requests = [*evaluate(store).run_requests, *evaluate_recovery(store, instance).run_requests]
    assert len(requests) == 2
    for request in requests:
        config = request.run_config["execution"]["config"]
        assert list(config) == [execution]
        if execution == "multiprocess":
            assert config["multiprocess"]["max_concurrent"] == 3
