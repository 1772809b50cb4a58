"""The code location loads, and its definitions are wired the way docs/configuration.md says."""

import dagster as dg

from campaign_pipeline.definitions import defs
from campaign_pipeline.defs.sensors import asset_generated_campaigns_sensor


def test_definitions_load() -> None:
    """Dagster can load the code location, with every resource the job needs."""
    dg.Definitions.validate_loadable(defs)
    assert defs.get_job_def("process_campaign_messages") is not None


def test_sensor_runs_by_default_every_30_seconds() -> None:
    """The sensor starts running when the code location loads, at the spec's default interval."""
    assert asset_generated_campaigns_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert asset_generated_campaigns_sensor.minimum_interval_seconds == 30


def test_queue_settings_come_from_the_environment_not_the_definitions() -> None:
    """Queue URL and region are EnvVars, resolved at run time and never stored as values."""
    sqs_queue = defs.resources["sqs_queue"]
    assert isinstance(sqs_queue.queue_url, dg.EnvVar)
    assert isinstance(sqs_queue.region_name, dg.EnvVar)
    assert sqs_queue.queue_url.env_var_name == "AWS_SQS_QUEUE_URL"
    assert sqs_queue.region_name.env_var_name == "AWS_REGION"
