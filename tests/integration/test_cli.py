"""The `campaign-pipeline` console script, run as a real subprocess.

Covers `init-db`, `process` (on SQLite and PostgreSQL, and every check it makes before a run),
`pause` of an unknown campaign, `messages` and `demo --once`. Touches a temporary DAGSTER_HOME
and working directory, moto's SQS server over HTTP, SQLite files and a throwaway PostgreSQL
database.
"""

import json
import os
import re
import sqlite3
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from campaign_pipeline.demo import DEMO_CAMPAIGNS, port_is_open
from campaign_pipeline.lifecycle import refusal
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.store.schema import campaign_audience, campaigns
from tests.conftest import assert_one_line_error, drain, free_port, run_cli

ORGANIZATION_ID = "123e4567-e89b-12d3-a456-426614174000"
# Telemetry off: tests neither print Dagster's first-run notice nor record usage.
DAGSTER_YAML = "telemetry:\n  enabled: false\n"


@pytest.fixture
def dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    return home


@pytest.fixture
def cli_env(dagster_home: Path) -> dict[str, str]:
    """The test's environment (fake AWS credentials) with its own DAGSTER_HOME and no queue."""
    env = dict(os.environ)
    for variable in (
        "AWS_SQS_QUEUE_URL",
        "CAMPAIGN_DATABASE_URL",
        "CAMPAIGN_BATCH_SIZE",
        "CAMPAIGN_PROCESSING_INTERVAL",
    ):
        env.pop(variable, None)
    env["DAGSTER_HOME"] = str(dagster_home)
    return env


@pytest.fixture
def queue_env(
    cli_env: dict[str, str], sqs_endpoint: str, make_queue: Callable[..., str]
) -> dict[str, str]:
    """`cli_env` pointed at a new FIFO queue on moto."""
    return cli_env | {"AWS_ENDPOINT_URL_SQS": sqs_endpoint, "AWS_SQS_QUEUE_URL": make_queue()}


def add_text_campaign(store: CampaignStore, phones: list[str], message_type: str = "text") -> str:
    campaign_id = store.campaigns.add(
        organization_id=ORGANIZATION_ID,
        name="CLI test",
        status="asset_generated",
        message_type=message_type,
        message_content="Hello {{name}}!",
    )
    store.campaigns.add_recipients(
        campaign_id, [{"phone_number": phone, "name": f"R{i}"} for i, phone in enumerate(phones)]
    )
    return campaign_id


def phones(valid: int, invalid: int) -> list[str]:
    return [f"+1555{i:07d}" for i in range(valid)] + [f"555{i:07d}" for i in range(invalid)]


def test_init_db_twice_creates_the_schema_and_keeps_its_data(
    cli_env: dict[str, str], dagster_home: Path, tmp_path: Path
) -> None:
    """init-db makes campaigns.db in DAGSTER_HOME; a second run keeps the tables and rows."""
    first = run_cli("init-db", env=cli_env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    database = dagster_home / "campaigns.db"
    assert first.stdout.strip() == f"Campaign database ready: sqlite:///{database}"
    store = CampaignStore(database_url=f"sqlite:///{database}")
    campaign_id = add_text_campaign(store, phones(1, 0))

    second = run_cli("init-db", env=cli_env, cwd=tmp_path)

    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert store.campaigns.get(campaign_id) is not None
    store.engine.dispose()


def test_init_db_in_a_new_dagster_home_makes_it_an_instance_with_telemetry_off(
    queue_env: dict[str, str], tmp_path: Path
) -> None:
    """The default store lives in $DAGSTER_HOME; a home init-db makes is a whole instance, so
    the next `process` prints no notice about a missing dagster.yaml, nor a telemetry banner."""
    home = tmp_path / "new_home"
    env = queue_env | {"DAGSTER_HOME": str(home)}
    assert run_cli("init-db", env=env, cwd=tmp_path).returncode == 0
    assert "enabled: false" in (home / "dagster.yaml").read_text()
    store = CampaignStore(database_url=f"sqlite:///{home / 'campaigns.db'}")
    campaign_id = add_text_campaign(store, phones(2, 0))
    store.engine.dispose()
    result = run_cli("process", campaign_id, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    output = (result.stdout + result.stderr).lower()
    assert "telemetry" not in output and "dagster.yaml" not in output, output


def test_init_db_hides_the_database_password(
    cli_env: dict[str, str], postgres_url: str, tmp_path: Path
) -> None:
    """The printed PostgreSQL URL masks its password (trust auth ignores it)."""
    url = postgres_url.replace("postgres@", "postgres:hunter2@")
    result = run_cli("init-db", env=cli_env | {"CAMPAIGN_DATABASE_URL": url}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert result.stdout.strip() == "Campaign database ready: " + url.replace("hunter2", "***")


def test_process_queues_a_sqlite_campaign_and_records_the_run(
    queue_env: dict[str, str],
    sqlite_store: CampaignStore,
    sqs_client: object,
    dagster_home: Path,
    tmp_path: Path,
) -> None:
    """Every recipient ends queued or failed, the summary names the run, the instance has it."""
    campaign_id = add_text_campaign(sqlite_store, phones(6, 2))
    env = queue_env | {"CAMPAIGN_DATABASE_URL": sqlite_store.database_url}

    result = run_cli("process", campaign_id, env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    summary = re.fullmatch(
        rf"run (\S+) campaign {campaign_id}: this run queued 6 and failed 2 in \d+\.\d\d s "
        r"\(\d+\.\d messages/s\); the campaign: 6 queued, 2 failed, 0 pending\n",
        result.stdout,
    )
    assert summary, result.stdout
    assert sqlite_store.audience.counts(campaign_id) == {
        "pending": 0,
        "ready_to_send": 6,
        "failed": 2,
    }
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
    assert [run.run_id for run in runs] == [summary.group(1)]
    assert runs[0].tags["campaign_id"] == campaign_id
    assert len(drain(sqs_client, env["AWS_SQS_QUEUE_URL"])) == 6
    status = run_cli("status", campaign_id, "--json", env=env, cwd=tmp_path)
    assert json.loads(status.stdout)["failed_by_code"] == {"invalid": 2}, status.stderr
    table = run_cli("status", campaign_id, env=env, cwd=tmp_path).stdout
    assert "\nfailed      2 invalid\n" in table, table

    rerun = run_cli("process", campaign_id, env=env, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert re.fullmatch(
        rf"run \S+ campaign {campaign_id}: this run queued 0 and failed 0 in \d+\.\d\d s "
        r"\(0\.0 messages/s\); the campaign: 6 queued, 2 failed, 0 pending\n",
        rerun.stdout,
    ), rerun.stdout


def test_process_accounts_for_every_recipient_on_postgresql(
    queue_env: dict[str, str],
    postgres_store: CampaignStore,
    postgres_url: str,
    sqs_client: object,
    make_queue: Callable[..., str],
    tmp_path: Path,
) -> None:
    """A few hundred recipients on PostgreSQL and a standard queue: each queued once or failed."""
    campaign_id = add_text_campaign(postgres_store, phones(280, 20))
    # A standard queue, as the spec creates; moto also takes FIFO sends far more slowly.
    env = queue_env | {
        "CAMPAIGN_DATABASE_URL": postgres_url,
        "AWS_SQS_QUEUE_URL": make_queue(fifo=False),
    }

    result = run_cli("process", "--max-concurrent-batches", "2", campaign_id, env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert (
        f"campaign {campaign_id}: this run queued 280 and failed 20 in " in result.stdout
        and "; the campaign: 280 queued, 20 failed, 0 pending\n" in result.stdout
    )
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        (run,) = instance.get_runs()
    sqs_config = run.run_config["resources"]["sqs_queue"]["config"]
    assert sqs_config["max_concurrent_batches"] == 2
    assert sqs_config["queue_url"] == {"env": "AWS_SQS_QUEUE_URL"}
    assert postgres_store.audience.counts(campaign_id) == {
        "pending": 0,
        "ready_to_send": 280,
        "failed": 20,
    }
    messages = drain(sqs_client, env["AWS_SQS_QUEUE_URL"])
    audience_ids = {json.loads(m["Body"])["campaignAudienceId"] for m in messages}
    assert len(messages) == len(audience_ids) == 280


def test_process_reports_a_failed_run_on_one_line(
    queue_env: dict[str, str], sqlite_store: CampaignStore, tmp_path: Path
) -> None:
    """A campaign the job rejects fails the run: its step's description, exit status 1."""
    campaign_id = add_text_campaign(sqlite_store, phones(2, 0), message_type="fax")
    env = queue_env | {"CAMPAIGN_DATABASE_URL": sqlite_store.database_url}

    result = run_cli("process", campaign_id, env=env, cwd=tmp_path)

    line = assert_one_line_error(result, "failed in step claim_campaign", "'fax'", status=1)
    assert line.startswith("campaign-pipeline: run ")
    assert sqlite_store.campaigns.get(campaign_id)["status"] == "failed"


def test_process_rejects_a_malformed_campaign_id(cli_env: dict[str, str], tmp_path: Path) -> None:
    """An id that is not a UUID is refused before anything else."""
    result = run_cli("process", "campaign-42", env=cli_env, cwd=tmp_path)
    assert_one_line_error(result, "campaign-pipeline: error:", "'campaign-42' is not a UUID")


def test_process_reports_an_unknown_campaign(
    queue_env: dict[str, str], sqlite_store: CampaignStore, dagster_home: Path, tmp_path: Path
) -> None:
    """A UUID with no campaign is reported, and no run is started."""
    campaign_id = str(uuid.uuid4())
    env = queue_env | {"CAMPAIGN_DATABASE_URL": sqlite_store.database_url}

    result = run_cli("process", campaign_id, env=env, cwd=tmp_path)

    assert_one_line_error(result, f"campaign {campaign_id} does not exist")
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        assert instance.get_runs() == []


@pytest.mark.parametrize("status", ["paused", "cancelled", "later"])
def test_process_refuses_a_stopped_or_later_campaign_in_the_lifecycle_tables_words(
    cli_env: dict[str, str],
    sqlite_store: CampaignStore,
    dagster_home: Path,
    tmp_path: Path,
    status: str,
) -> None:
    """Paused, cancelled and later campaigns: `lifecycle.refusal`'s line, exit 2, no run."""
    campaign_id = add_text_campaign(sqlite_store, phones(1, 0))
    values: dict[str, object] = {"send_at": datetime.now(UTC) + timedelta(days=1)}
    if status != "later":
        values |= {"status": status, f"{status}_by": "ops", f"{status}_at": datetime.now(UTC)}
    with sqlite_store.engine.begin() as connection:
        connection.execute(
            sa.update(campaigns).where(campaigns.c.id == campaign_id).values(**values)
        )
    expected = refusal(sqlite_store.campaigns.get(campaign_id))
    env = cli_env | {"CAMPAIGN_DATABASE_URL": sqlite_store.database_url}

    result = run_cli("process", campaign_id, env=env, cwd=tmp_path)

    assert expected is not None
    assert_one_line_error(result, f"campaign-pipeline: error: {expected}")
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        assert instance.get_runs() == []


def test_pause_reports_an_unknown_campaign(
    cli_env: dict[str, str], sqlite_store: CampaignStore, tmp_path: Path
) -> None:
    """A UUID with no campaign is one line and exit 2, as every refused command."""
    campaign_id = str(uuid.uuid4())
    env = cli_env | {"CAMPAIGN_DATABASE_URL": sqlite_store.database_url}

    result = run_cli("pause", campaign_id, env=env, cwd=tmp_path)

    assert_one_line_error(
        result, f"campaign-pipeline: error: campaign {campaign_id} does not exist"
    )


def test_process_reports_an_unreachable_database_without_its_password(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """A database nobody listens for is one line naming it, password hidden."""
    env = cli_env | {"CAMPAIGN_DATABASE_URL": "postgresql://nobody:hunter2@127.0.0.1:1/x"}
    result = run_cli("process", str(uuid.uuid4()), env=env, cwd=tmp_path)
    line = assert_one_line_error(
        result, "cannot reach the campaign database postgresql://nobody:***@127.0.0.1:1/x"
    )
    assert "hunter2" not in line


def test_process_asks_for_init_db_when_the_schema_is_missing(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """A database without the pipeline's tables points at `init-db`."""
    database = tmp_path / "empty.db"
    sqlite3.connect(database).close()
    env = cli_env | {"CAMPAIGN_DATABASE_URL": f"sqlite:///{database}"}
    result = run_cli("process", str(uuid.uuid4()), env=env, cwd=tmp_path)
    assert_one_line_error(result, "has no campaigns or campaign_audience table", "init-db")


def test_process_reports_missing_queue_configuration(
    cli_env: dict[str, str], sqlite_store: CampaignStore, tmp_path: Path
) -> None:
    """Without AWS_SQS_QUEUE_URL the command says which setting is missing."""
    campaign_id = add_text_campaign(sqlite_store, phones(1, 0))
    env = cli_env | {"CAMPAIGN_DATABASE_URL": sqlite_store.database_url}
    result = run_cli("process", campaign_id, env=env, cwd=tmp_path)
    assert_one_line_error(result, "missing configuration", "AWS_SQS_QUEUE_URL")


def test_process_reports_an_unreachable_queue_endpoint(
    queue_env: dict[str, str], sqlite_store: CampaignStore, tmp_path: Path
) -> None:
    """An SQS endpoint on a closed port is one line naming the queue and endpoint."""
    campaign_id = add_text_campaign(sqlite_store, phones(1, 0))
    closed = f"http://127.0.0.1:{free_port()}"
    env = queue_env | {
        "CAMPAIGN_DATABASE_URL": sqlite_store.database_url,
        "AWS_ENDPOINT_URL_SQS": closed,
    }
    result = run_cli("process", campaign_id, env=env, cwd=tmp_path)
    assert_one_line_error(result, "cannot reach queue", closed)


def test_process_reports_a_queue_that_does_not_exist(
    queue_env: dict[str, str], sqlite_store: CampaignStore, sqs_endpoint: str, tmp_path: Path
) -> None:
    """A queue URL SQS does not know is reported as such."""
    campaign_id = add_text_campaign(sqlite_store, phones(1, 0))
    missing = f"{sqs_endpoint}/123456789012/no-such-queue.fifo"
    env = queue_env | {
        "CAMPAIGN_DATABASE_URL": sqlite_store.database_url,
        "AWS_SQS_QUEUE_URL": missing,
    }
    result = run_cli("process", campaign_id, env=env, cwd=tmp_path)
    assert_one_line_error(result, f"queue {missing}", "does not exist")


def test_messages_shows_queued_messages_without_consuming_them(
    queue_env: dict[str, str], sqs_client: object, tmp_path: Path
) -> None:
    """`messages --limit 3` prints three JSON bodies; all five stay in the queue."""
    queue_url = queue_env["AWS_SQS_QUEUE_URL"]
    for i in range(5):
        sqs_client.send_message(
            QueueUrl=queue_url,
            MessageBody=json.dumps({"n": i}),
            MessageGroupId="g",
            MessageDeduplicationId=str(i),
        )

    result = run_cli("messages", "--limit", "3", env=queue_env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    bodies = json.loads(result.stdout)
    assert len(bodies) == 3
    assert all(set(body) == {"n"} for body in bodies)
    assert len(drain(sqs_client, queue_url)) == 5


def test_demo_once_processes_the_sample_campaigns(cli_env: dict[str, str], tmp_path: Path) -> None:
    """`demo --once` seeds, runs each campaign, prints a table without phone numbers, exits 0.

    Its instance is its own, made by the demo, and keeps telemetry (and Dagster's banner
    about it) off.
    """
    demo_home = tmp_path / ".demo" / "dagster_home"
    env = {k: v for k, v in cli_env.items() if k != "DAGSTER_HOME"}

    result = run_cli("demo", "--once", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "telemetry" not in (result.stdout + result.stderr).lower()
    assert "enabled: false" in (demo_home / "dagster.yaml").read_text()
    summary, _, messages = result.stdout.partition("First 3 messages")
    assert messages.count('"organizationId"') == 3
    assert not re.search(r"\+\d{6,}", summary), summary
    assert "Top failure reasons" in summary
    for campaign, _audience in DEMO_CAMPAIGNS:
        row = rf"^\s+{campaign['name']}\s+{campaign['message_type']}\s+ready_to_launch"
        # queued, at least one failed (each sample audience has an invalid recipient), 0 pending
        assert re.search(row + r"\s+\d+\s+[1-9]\d*\s+0$", summary, re.MULTILINE), summary
    store = CampaignStore(database_url=f"sqlite:///{tmp_path / '.demo' / 'campaigns.db'}")
    with store.engine.connect() as connection:
        statuses = set(connection.scalars(sa.select(campaign_audience.c.status).distinct()))
    store.engine.dispose()
    assert statuses == {"ready_to_send", "failed"}
    with dg.DagsterInstance.from_config(str(demo_home)) as instance:
        assert len(instance.get_runs()) == len(DEMO_CAMPAIGNS)
    endpoint = re.search(r"at http://127\.0\.0\.1:(\d+);", result.stdout)
    assert endpoint, result.stdout
    assert not port_is_open(int(endpoint.group(1)))


def test_demo_refuses_to_delete_a_database_it_did_not_create(
    cli_env: dict[str, str], dagster_home: Path, tmp_path: Path
) -> None:
    """A campaigns.db next to DAGSTER_HOME holding other campaigns is left alone."""
    database = dagster_home.parent / "campaigns.db"
    store = CampaignStore(database_url=f"sqlite:///{database}")
    store.create_schema()
    add_text_campaign(store, phones(1, 0))
    store.engine.dispose()

    result = run_cli("demo", "--once", env=cli_env, cwd=tmp_path)

    assert_one_line_error(result, f"refusing to delete {database}")
    assert database.exists()
