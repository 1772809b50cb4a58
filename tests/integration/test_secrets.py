"""Secrets and data exposure: nothing a run leaves behind holds a secret or a full phone number.

Distinctive values are planted in AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and the password of
CAMPAIGN_DATABASE_URL (PostgreSQL's trust authentication ignores it). Runs go through
`campaign-pipeline process` (successful, and refused for an unreachable queue or database) and
through the code location's job (failing on an unreachable queue or database), with DAGSTER_HOME
in a temporary directory. Then every file there (SQLite run and event storage, compressed
snapshots included, compute logs), stdout and stderr, and the runs' events, run config and tags
read through `DagsterInstance` are searched for the planted values and for the recipients' phone
numbers. SQL injection strings go into every text field of campaigns and recipients, on SQLite
and PostgreSQL: the tables stay intact and the values reach the payloads exactly.
"""

import contextlib
import json
import os
import sqlite3
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from campaign_pipeline.defs.jobs import campaign_run_config, process_campaign_messages
from campaign_pipeline.defs.ops import CampaignConfig
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.store.schema import campaign_audience, campaigns
from tests.conftest import free_port, run_cli
from tests.support.invariant import check_campaign_invariant
from tests.support.reliability_log import log_exposure_sweep

ORGANIZATION_ID = "123e4567-e89b-12d3-a456-426614174000"
SECRET_KEY = f"plantedSecretKey{uuid.uuid4().hex}"
SESSION_TOKEN = f"plantedSessionToken{uuid.uuid4().hex}"
DATABASE_PASSWORD = f"plantedDbPassword{uuid.uuid4().hex}"
PLANTED = (SECRET_KEY, SESSION_TOKEN, DATABASE_PASSWORD)
# Distinctive numbers, so a match cannot be a coincidence; the last two are invalid.
PHONES = [f"+4479460{n:05d}" for n in (10417, 23981, 31177, 48263, 59021)]
INVALID_PHONES = ["447946066813", "+4479460abc77"]
DAGSTER_YAML = "telemetry:\n  enabled: false\n"
# How the report names what was planted (never the values themselves).
PLANTED_NAMES = [
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "the password in CAMPAIGN_DATABASE_URL",
]
PHONES_NAMED = f"{len(PHONES) + len(INVALID_PHONES)} recipients' phone numbers"


def with_password(url: str) -> str:
    """`url` (user postgres, no password) with the planted password."""
    assert "postgres@" in url
    return url.replace("postgres@", f"postgres:{DATABASE_PASSWORD}@", 1)


def sqlite_texts(path: Path) -> Iterator[str]:
    """Every value in every table of a SQLite file, zlib-compressed blobs decompressed."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master")]
        for table in tables:
            try:
                rows = connection.execute(f'SELECT * FROM "{table}"').fetchall()
            except sqlite3.DatabaseError:
                continue  # an index or trigger, not a table
            for row in rows:
                for value in row:
                    if isinstance(value, bytes):
                        with contextlib.suppress(zlib.error):
                            value = zlib.decompress(value)
                        yield value.decode("utf-8", "replace")
                    elif value is not None:
                        yield str(value)
    finally:
        connection.close()


def texts_under(directory: Path) -> Iterator[tuple[str, str]]:
    """(where, text) for every file under `directory`, and every value of its SQLite files."""
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        yield str(path), data.decode("utf-8", "replace")
        if data.startswith(b"SQLite format 3\x00"):
            yield from ((f"{path} (decoded)", text) for text in sqlite_texts(path))


def texts_of_instance(home: Path) -> Iterator[tuple[str, str]]:
    """Each run's events, run config and tags, as the instance serves them."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert runs, "no run was recorded"
        for run in runs:
            yield f"run {run.run_id} config", json.dumps(run.run_config, default=str)
            yield f"run {run.run_id} tags", json.dumps(dict(run.tags))
            for entry in instance.all_logs(run.run_id):
                yield f"run {run.run_id} event", entry.to_json()


def assert_nothing_exposed(
    texts: Iterator[tuple[str, str]], *, phones: list[str] = (), planted: tuple[str, ...] = PLANTED
) -> int:
    """No planted secret and no full phone number (with or without '+') in any text."""
    searched = 0
    needles = [*planted, *phones, *(p.lstrip("+") for p in phones)]
    for where, text in texts:
        searched += 1
        for needle in needles:
            assert needle not in text, f"{needle[:12]}... found in {where}"
    return searched


def test_scanner_finds_values_in_files_and_compressed_sqlite_blobs(tmp_path: Path) -> None:
    """The search itself works: a planted value in a log or a compressed blob is found."""
    (tmp_path / "compute.err").write_text(f"x {SESSION_TOKEN} y")
    with pytest.raises(AssertionError, match="found in"):
        assert_nothing_exposed(texts_under(tmp_path))
    (tmp_path / "compute.err").unlink()
    database = tmp_path / "runs.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE snapshots (body BLOB)")
        connection.execute(
            "INSERT INTO snapshots VALUES (?)", (zlib.compress(json.dumps([SECRET_KEY]).encode()),)
        )
    connection.close()
    assert SECRET_KEY.encode() not in database.read_bytes()
    with pytest.raises(AssertionError, match=r"\(decoded\)"):
        assert_nothing_exposed(texts_under(tmp_path))


@pytest.fixture
def dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    return home


@pytest.fixture
def secret_env(
    dagster_home: Path,
    postgres_store: CampaignStore,
    postgres_url: str,
    sqs_endpoint: str,
    make_queue: Callable[..., str],
) -> dict[str, str]:
    """The CLI's environment: planted secrets, PostgreSQL with a password, a moto queue."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    return env | {
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_SESSION_TOKEN": SESSION_TOKEN,
        "CAMPAIGN_DATABASE_URL": with_password(postgres_url),
        "DAGSTER_HOME": str(dagster_home),
        "AWS_ENDPOINT_URL_SQS": sqs_endpoint,
        "AWS_SQS_QUEUE_URL": make_queue(fifo=True),
    }


def add_campaign(store: CampaignStore) -> str:
    campaign_id = store.campaigns.add(
        organization_id=ORGANIZATION_ID,
        name="secrets",
        status="asset_generated",
        message_type="text",
        message_content="Hi {{name}}, call {{phone_number}}",
    )
    store.campaigns.add_recipients(
        campaign_id,
        [{"phone_number": phone, "name": f"R{i}"} for i, phone in enumerate(PHONES)]
        + [{"phone_number": phone, "name": "bad"} for phone in INVALID_PHONES],
    )
    return campaign_id


def test_successful_run_exposes_no_secret_and_no_phone_number(
    secret_env: dict[str, str],
    postgres_store: CampaignStore,
    sqs_client: object,
    dagster_home: Path,
    tmp_path: Path,
) -> None:
    """`process -v`: output, DAGSTER_HOME and the instance's records hold no secret or number."""
    campaign_id = add_campaign(postgres_store)

    result = run_cli("process", "-v", campaign_id, env=secret_env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-2000:]
    assert "5 queued, 2 failed, 0 pending" in result.stdout
    # The verbose event log did go to stderr: the search has something to search.
    assert "claim_campaign" in result.stderr
    outputs = [("stdout", result.stdout), ("stderr", result.stderr)]
    searched = assert_nothing_exposed(iter(outputs), phones=PHONES + INVALID_PHONES)
    searched += assert_nothing_exposed(texts_under(dagster_home), phones=PHONES + INVALID_PHONES)
    searched += assert_nothing_exposed(
        texts_of_instance(dagster_home), phones=PHONES + INVALID_PHONES
    )
    assert searched > 50
    log_exposure_sweep(
        "`process -v` of a campaign that succeeds",
        planted=[*PLANTED_NAMES, PHONES_NAMED],
        searched=[
            "stdout and stderr",
            "every file of DAGSTER_HOME, SQLite values decoded",
            "each run's config and tags",
        ],
        texts=searched,
    )
    report = check_campaign_invariant(
        postgres_store, campaign_id, sqs_client, secret_env["AWS_SQS_QUEUE_URL"], fifo=True
    )
    # The numbers did travel where they belong: in the messages.
    assert sorted(json.loads(body)["to"] for body in report.bodies.values()) == sorted(PHONES)


@pytest.mark.parametrize("unreachable", ["queue", "database"])
def test_refused_process_exposes_no_secret(
    unreachable: str,
    secret_env: dict[str, str],
    postgres_store: CampaignStore,
    dagster_home: Path,
    tmp_path: Path,
) -> None:
    """An unreachable queue or database is one line on stderr, without the planted values."""
    campaign_id = add_campaign(postgres_store)
    closed = free_port()
    if unreachable == "queue":
        env = secret_env | {"AWS_ENDPOINT_URL_SQS": f"http://127.0.0.1:{closed}"}
        expected = f"cannot reach queue {env['AWS_SQS_QUEUE_URL']}"
    else:
        url = f"postgresql://postgres:{DATABASE_PASSWORD}@127.0.0.1:{closed}/campaigns"
        env = secret_env | {"CAMPAIGN_DATABASE_URL": url}
        expected = (
            f"cannot reach the campaign database postgresql://postgres:***@127.0.0.1:{closed}"
        )

    result = run_cli("process", "-v", campaign_id, env=env, cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert expected in line, line
    searched = assert_nothing_exposed(iter([("stdout", result.stdout), ("stderr", result.stderr)]))
    searched += assert_nothing_exposed(texts_under(dagster_home))
    log_exposure_sweep(
        f"`process` refused: the {unreachable} is unreachable",
        planted=PLANTED_NAMES,
        searched=["stdout and stderr (one line)", "every file of DAGSTER_HOME"],
        texts=searched,
    )


@pytest.mark.parametrize("unreachable", ["queue", "database"])
def test_failed_run_exposes_no_secret_and_no_phone_number(
    unreachable: str,
    monkeypatch: pytest.MonkeyPatch,
    postgres_store: CampaignStore,
    postgres_url: str,
    make_queue: Callable[..., str],
    sqs_endpoint: str,
    dagster_home: Path,
) -> None:
    """A run of the code location's job failing on SQS or the database leaks nothing either."""
    from campaign_pipeline.definitions import defs

    campaign_id = add_campaign(postgres_store)
    closed = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    monkeypatch.setenv("AWS_SQS_QUEUE_URL", make_queue(fifo=True))
    if unreachable == "queue":
        monkeypatch.setenv("CAMPAIGN_DATABASE_URL", with_password(postgres_url))
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", f"http://{closed}")
    else:
        monkeypatch.setenv(
            "CAMPAIGN_DATABASE_URL", f"postgresql://postgres:{DATABASE_PASSWORD}@{closed}/x"
        )
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", sqs_endpoint)
    run_config = campaign_run_config(campaign_id)
    # One attempt per SQS call, as configured at launch (the way the CLI sets its options).
    run_config["resources"] = {
        "sqs_queue": {
            "config": {
                "queue_url": {"env": "AWS_SQS_QUEUE_URL"},
                "region_name": {"env": "AWS_REGION"},
                "max_attempts": 1,
            }
        }
    }

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        result = defs.get_job_def("process_campaign_messages").execute_in_process(
            run_config=run_config, instance=instance, raise_on_error=False
        )

    assert not result.success
    failed_step = "send_campaign_messages[shard_0]" if unreachable == "queue" else "claim_campaign"
    assert [event.step_key for event in result.get_step_failure_events()] == [failed_step]
    phones = PHONES + INVALID_PHONES
    searched = assert_nothing_exposed(texts_under(dagster_home), phones=phones)
    searched += assert_nothing_exposed(texts_of_instance(dagster_home), phones=phones)
    assert postgres_store.audience.counts(campaign_id)["pending"] == len(phones)
    log_exposure_sweep(
        f"the code location's job fails: the {unreachable} is unreachable",
        planted=[*PLANTED_NAMES, PHONES_NAMED],
        searched=[
            "every file of DAGSTER_HOME, SQLite values decoded",
            "each run's config and tags",
        ],
        texts=searched,
    )


# SQL injection

INJECTIONS = [
    "'; DROP TABLE campaigns; --",
    '" OR 1=1 --',
    "' OR ''='",
    "Robert'); DROP TABLE campaign_audience;--",
    "*/ DELETE FROM campaign_audience; /*",
    "\x00",
    "a\x00'; DROP TABLE campaigns; --",
    "$$",
    "$1",
    "$$; DROP TABLE campaigns; $$",
    "\\",
    "\\'",
    "\\\\'; --",
    "E'\\x27'",
    "%s",
    "%(ids)s",
    ":campaign_id",
    "?",
    "\\.",
    "\\N",
]
ORGANIZATION_INJECTION = "';DROP TABLE campaigns;--"  # the column takes 36 characters
URL_INJECTION = "https://cdn.example.com/x.jpg?q=';DROP%20TABLE--\"OR1=1$$\\"


def injections_for(store: CampaignStore) -> list[str]:
    """PostgreSQL text cannot hold NUL (it refuses it, see below); SQLite takes everything."""
    if store.engine.dialect.name == "postgresql":
        return [text for text in INJECTIONS if "\x00" not in text]
    return INJECTIONS


def table_snapshot(store: CampaignStore, campaign_id: str) -> tuple[Any, ...]:
    with store.engine.connect() as connection:
        campaign = connection.execute(
            sa.select(campaigns).where(campaigns.c.id == campaign_id)
        ).one()
        audience = connection.execute(
            sa.select(campaign_audience)
            .where(campaign_audience.c.campaign_id == campaign_id)
            .order_by(campaign_audience.c.id)
        ).all()
    return tuple(campaign), [tuple(row) for row in audience]


def injection_columns(message_type: str, text: str) -> dict[str, Any]:
    if message_type == "template":
        return {
            "template_name": text,
            "template_language": text,
            "template_parameters": [
                {"type": "body", "valueType": text, "value": text + "{{note}}"}
            ],
        }
    if message_type == "text":
        return {"message_content": text + "{{name}}|{{note}}"}
    return {"media_url": URL_INJECTION, "caption": text + "{{name}}"}


@pytest.mark.parametrize("message_type", ["template", "text", "image"])
def test_injection_strings_in_every_text_field_round_trip_and_harm_nothing(
    message_type: str,
    store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Injection strings everywhere: tables intact, each value exactly in its payload."""
    # Most of these recipients are invalid on purpose; the preflight guard would hold them.
    monkeypatch.setenv("CAMPAIGN_MAX_INVALID_FRACTION", "1")
    canary = store.campaigns.add(
        organization_id=ORGANIZATION_ID, name="canary", status="draft", message_type="text"
    )
    store.campaigns.add_recipients(canary, [{"phone_number": PHONES[0], "name": "Canary"}])
    before = table_snapshot(store, canary)
    texts = injections_for(store)
    joined = " ".join(texts)
    campaign_id = store.campaigns.add(
        organization_id=ORGANIZATION_INJECTION,
        name=joined,
        status="asset_generated",
        message_type=message_type,
        **injection_columns(message_type, joined),
    )
    # Each its own number: recipients with one number are one person, sent once.
    sent = {
        f"n{i}": {
            "phone_number": f"+4479460{60000 + i:05d}",
            "name": text,
            "attributes": {"note": text, text: text},
        }
        for i, text in enumerate(texts)
    }
    # Refused: an injection string as the phone number, or as the id (which takes 36 characters).
    other = {"name": "x", "attributes": {"note": "n"}}
    refused = {f"p{i}": {"phone_number": text, **other} for i, text in enumerate(texts)}
    refused |= {text: {"phone_number": PHONES[1], **other} for text in texts if len(text) <= 36}
    store.campaigns.add_recipients(
        campaign_id, [{"id": i} | r for i, r in (sent | refused).items()]
    )
    queue = make_sqs_queue(fifo=False)

    result = process_campaign_messages.execute_in_process(
        run_config=dg.RunConfig(ops={"claim_campaign": CampaignConfig(campaign_id=campaign_id)}),
        resources={"campaign_store": store, "sqs_queue": queue},
        raise_on_error=False,
    )

    assert result.success, [e.message for e in result.get_step_failure_events()]
    assert table_snapshot(store, canary) == before
    with store.engine.connect() as connection:
        assert set(sa.inspect(connection).get_table_names()) >= {"campaigns", "campaign_audience"}
        assert connection.scalar(sa.select(sa.func.count()).select_from(campaigns)) == 2
        stored = {
            row.id: row
            for row in connection.execute(
                sa.select(campaign_audience).where(campaign_audience.c.campaign_id == campaign_id)
            )
        }
    assert {i: (r.phone_number, r.name, r.attributes) for i, r in stored.items()} == {
        i: (r["phone_number"], r["name"], r["attributes"]) for i, r in (sent | refused).items()
    }
    assert store.campaigns.get(campaign_id)["name"] == joined
    report = check_campaign_invariant(store, campaign_id, sqs_client, queue.queue_url, fifo=False)
    assert set(report.bodies) == set(sent)
    for audience_id, recipient in sent.items():
        payload = json.loads(report.bodies[audience_id])
        text = recipient["name"]
        assert payload["organizationId"] == ORGANIZATION_INJECTION
        assert payload["campaignAudienceId"] == audience_id
        if message_type == "template":
            assert (payload["templateName"], payload["templateLanguage"]) == (joined, joined)
            assert payload["templateParameters"] == [
                {"type": "body", "valueType": joined, "value": joined + text}
            ]
        elif message_type == "text":
            assert payload["messageContent"] == f"{joined}{text}|{text}"
        else:
            assert (payload["mediaUrl"], payload["caption"]) == (URL_INJECTION, joined + text)
    for audience_id in refused:
        reason = report.failure_reasons[audience_id]
        assert reason.startswith("phone number") or reason == (
            "audience id is not a valid SQS batch entry id"
        ), reason


def test_postgresql_refuses_nul_in_text_and_keeps_the_tables_as_they_were(
    postgres_store: CampaignStore,
) -> None:
    """NUL cannot be stored in a PostgreSQL text column: the insert fails whole, nothing else."""
    campaign_id = postgres_store.campaigns.add(
        organization_id=ORGANIZATION_ID, status="asset_generated", message_type="text"
    )
    before = table_snapshot(postgres_store, campaign_id)
    with pytest.raises(sa.exc.DataError, match="NUL"):
        postgres_store.campaigns.add_recipients(
            campaign_id,
            [
                {"phone_number": PHONES[0], "name": "ok"},
                {"phone_number": PHONES[1], "name": "a\x00b"},
            ],
        )
    with pytest.raises(sa.exc.DataError, match="NUL"):
        postgres_store.campaigns.add(
            organization_id=ORGANIZATION_ID, name="a\x00'; --", message_type="text"
        )
    assert table_snapshot(postgres_store, campaign_id) == before
    with postgres_store.engine.connect() as connection:
        assert connection.scalar(sa.select(sa.func.count()).select_from(campaigns)) == 1
    # In JSON attributes NUL is an escape, which PostgreSQL keeps.
    postgres_store.campaigns.add_recipients(
        campaign_id, [{"phone_number": PHONES[0], "attributes": {"a\x00": "b\x00'; --"}}]
    )
    (row,) = table_snapshot(postgres_store, campaign_id)[1]
    assert row[4] == {"a\x00": "b\x00'; --"}
