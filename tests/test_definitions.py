"""The code location loads, and its definitions are wired the way docs/configuration.md says."""

import json
import os
import subprocess
import sys

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


def test_sensor_interval_comes_from_campaign_processing_interval() -> None:
    """CAMPAIGN_PROCESSING_INTERVAL (milliseconds) sets the sensor's interval (seconds)."""
    code = (
        "from campaign_pipeline.defs.sensors import asset_generated_campaigns_sensor as s;"
        "print(s.minimum_interval_seconds)"
    )
    env = os.environ | {"CAMPAIGN_PROCESSING_INTERVAL": "5000"}
    output = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "5"


def test_queue_settings_come_from_the_environment_not_the_definitions() -> None:
    """Queue URL and region are EnvVars, resolved at run time and never stored as values."""
    sqs_queue = defs.resources["sqs_queue"]
    assert isinstance(sqs_queue.queue_url, dg.EnvVar)
    assert isinstance(sqs_queue.region_name, dg.EnvVar)
    assert sqs_queue.queue_url.env_var_name == "AWS_SQS_QUEUE_URL"
    assert sqs_queue.region_name.env_var_name == "AWS_REGION"


def test_dagsters_family_is_installed_at_one_release() -> None:
    """dagster 1.13.N goes with the libraries 0.29.N: unpinned, pip mixes releases (it once
    picked a 2021 dagster-aws). The webserver, the PostgreSQL storage of deploy/dagster.yaml,
    the GraphQL client, dagster-aws and dagster-celery are each imported and checked."""
    import dagster_aws
    import dagster_celery
    import dagster_graphql
    import dagster_postgres
    import dagster_webserver

    release = dg.__version__.split(".")[2]
    assert dg.__version__.startswith("1.13.")
    for library in (dagster_webserver, dagster_graphql):
        assert library.__version__ == dg.__version__, library.__name__
    for library in (dagster_aws, dagster_postgres, dagster_celery):
        assert library.__version__ == f"0.29.{release}", library.__name__


def test_dg_lists_and_checks_the_code_location() -> None:
    """`dg list defs` and `dg check defs` (Dagster's CLI) load the project from [tool.dg]."""
    dg_cli = os.path.join(os.path.dirname(sys.executable), "dg")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = os.environ | {"DAGSTER_HOME": "", "NO_COLOR": "1"}
    env.pop("DAGSTER_HOME")
    listed = subprocess.run(
        [dg_cli, "list", "defs", "--json"], cwd=root, env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    names = {job["name"] for job in json.loads(listed.stdout)["jobs"]}
    assert names == {"process_campaign_messages", "check_sqs_status", "preview_campaign"}
    checked = subprocess.run(
        [dg_cli, "check", "defs"], cwd=root, env=env, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
