"""The code location in fresh processes: the sensor interval from the environment, Dagster's
family at one release, and `dg list defs` / `dg check defs`.

What loads in process is in `tests/unit/test_definitions.py`.
"""

import json
import os
import subprocess
import sys

import dagster as dg


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
