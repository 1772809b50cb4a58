"""Property-based tests (hypothesis): arbitrary recipients never break payload building or a run.

Recipients are drawn from strategies that mix valid E.164 numbers with junk, names and
attributes from arbitrary Unicode text (NUL, control characters, emoji, huge strings) and
attributes as arbitrary JSON values. `build_payloads` must never raise, and each row must be
what an oracle written from the spec's rules (`oracle_problems`, independent of the product's
code) says: the recipient's first problem as its reason, or a schema-valid payload carrying
exactly its values; a valid recipient is never failed.
A smaller property runs the real job on SQLite and PostgreSQL into moto's SQS server and checks
`tests/support/invariant.py` after every example. The example database is off: nothing is written to
the working tree; a failure prints its minimal example.
"""

import json
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaign_pipeline.defs.jobs import process_campaign_messages
from campaign_pipeline.defs.ops import CampaignConfig
from campaign_pipeline.payloads import PLACEHOLDER, build_payloads, recipients_frame
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from tests.conftest import REGION
from tests.integration.test_hostile_input import (
    ORGANIZATION_ID,
    campaign_message,
    recipient_row,
    reference_payload,
)
from tests.support.invariant import SQS_BODY_CHARACTERS, check_campaign_invariant
from tests.support.payload_schema import payload_validator
from tests.support.reliability_log import record

CAMPAIGN_ID = "123e4567-e89b-12d3-a456-426614174001"

# Campaigns whose placeholders read every kind of recipient value.
PROPERTY_CAMPAIGNS: dict[str, dict[str, Any]] = {
    "text": {"message_type": "text", "message_content": "{{name}} ({{phone_number}}): {{city}}"},
    "bare-text": {"message_type": "text", "message_content": "{{city}}"},
    "template": {
        "message_type": "template",
        "template_name": "welcome_message",
        "template_language": "en",
        "template_parameters": [
            {"type": "header", "valueType": "text", "value": "{{ name }}"},
            {"type": "body", "valueType": "text", "value": "code {{code}} for {{city}}"},
        ],
    },
    "image": {
        "message_type": "image",
        "media_url": "https://cdn.example.com/{{code}}.jpg",
        "caption": "{{name}} in {{city}}",
    },
    "audio": {"message_type": "audio", "media_url": "https://cdn.example.com/{{code}}.ogg"},
}

SPECIAL_TEXTS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "'; DROP TABLE campaigns; --",
    '" OR 1=1 --',
    "\\",
    "{{city}}",
    "{{",
    "}}",
    "\ufffe\uffff",
    "\u202e\u200f",
    "😀" * 1025,
    "x" * 4097,
    "y" * 102_400,
]


# What the job property's examples did, by database, for the reliability report.
JOB_EXAMPLES: dict[str, Counter[str]] = defaultdict(Counter)


@pytest.fixture(scope="module", autouse=True)
def report_job_examples() -> Iterator[None]:
    """One reliability-report line per database, once every example has kept the invariant."""
    yield
    for database, totals in JOB_EXAMPLES.items():
        record(
            "arbitrary recipients through the job (hypothesis)",
            group="hostile input",
            queue="standard",
            database=database,
            injected="recipients drawn by hypothesis: E.164 numbers and near misses, arbitrary "
            "Unicode names and attributes, arbitrary JSON; a 1 KiB queue",
            injections={},
            batch_calls=0,
            recipients=totals["recipients"],
            queued=totals["queued"],
            failed=totals["failed"],
            pending=0,
            duplicates=0,
            runs=[f"{totals['examples']} examples, each a run checked against the oracle"],
        )


@pytest.fixture(autouse=True)
def no_preflight_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Arbitrary recipients are mostly invalid: the guard would hold the campaign back."""
    monkeypatch.setenv("CAMPAIGN_MAX_INVALID_FRACTION", "1")


def texts(allow_nul: bool = True) -> st.SearchStrategy[str]:
    """Arbitrary Unicode text (no surrogates), awkward classics, and huge repeats."""
    text = st.one_of(
        st.text(max_size=30),
        st.sampled_from(SPECIAL_TEXTS),
        st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=3), st.integers(1, 6000)),
    )
    return text if allow_nul else text.map(lambda s: s.replace("\x00", ""))


def phone_numbers(allow_nul: bool = True) -> st.SearchStrategy[str | None]:
    """Valid E.164 numbers about half the time; else near misses, other digits, any text."""
    valid = st.from_regex(r"\A\+[1-9][0-9]{7,14}\Z")
    # Repeating a branch of one_of makes it likelier to be drawn.
    return st.one_of(
        *[valid] * 5,
        st.from_regex(r"\A\+?[0-9 ()-]{0,18}\Z"),
        st.from_regex(r"\A\+[0-9]{0,20}\Z"),
        st.builds(lambda d: "+1" + d * 9, st.sampled_from(["\u0661", "\uff11", "\u0967", "a"])),
        st.none(),
        texts(allow_nul),
    )


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    texts(),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
PLACEHOLDER_KEYS = st.sampled_from(["city", "code", "name", "phone_number"])


def attributes() -> st.SearchStrategy[Any]:
    """Absent, any JSON value, or an object with the placeholders' keys, mostly filled."""
    filled = st.fixed_dictionaries(
        {"city": st.one_of(texts(), st.integers(-(2**63), 2**63 - 1)), "code": texts()}
    )
    return st.one_of(
        st.none(),
        JSON_VALUES,
        st.dictionaries(st.one_of(PLACEHOLDER_KEYS, st.text(max_size=8)), JSON_VALUES, max_size=5),
        *[filled] * 3,
    )


def recipients(allow_nul: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "phone_number": phone_numbers(allow_nul),
            "name": st.one_of(st.none(), texts(allow_nul)),
            "attributes": attributes(),
        }
    )


# The spec's rules, written plainly and independently of `campaign_pipeline.payloads`: what a
# run must make of one recipient. Unicode's White_Space characters, for "empty" text.
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
WHITESPACE += "\u2028\u2029\u202f\u205f\u3000"
HTTP_URL = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?([/?#][^\s\x00-\x1f\x7f-\x9f]*)?")
# JSON encoders may escape a character or two differently: sizes this close to the queue's limit
# may go either way.
SIZE_MARGIN = 64


class Unknowable(Exception):
    """The oracle cannot render a value (a float, a list): the row is checked the weaker way."""


def oracle_value(key: str, recipient: dict[str, Any]) -> str | None:
    """What `{{key}}` becomes; None when there is no value (absent, null or empty)."""
    if key in ("name", "phone_number"):
        value = recipient[key]
    else:
        attributes = recipient["attributes"]
        value = attributes.get(key) if isinstance(attributes, dict) else None
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    raise Unknowable(key)


def oracle_fill(text: str | None, recipient: dict[str, Any], problems: list[str]) -> str | None:
    """`text` personalised, or None (and a problem noted) when a placeholder has no value."""
    if text is None:
        return None
    keys = PLACEHOLDER.findall(text)
    for key in keys:
        if oracle_value(key, recipient) is None:
            problems.append(f"no value for placeholder {{{{{key}}}}}")
            return None
    return PLACEHOLDER.sub(lambda m: str(oracle_value(m.group(1), recipient)), text)


def oracle_problems(columns: dict[str, Any], recipient: dict[str, Any]) -> list[str]:
    """Every rule the recipient breaks, in the order a run checks them (the first is its reason).

    Raises `Unknowable` when a placeholder's value is of a kind the oracle does not render.
    """
    problems = []
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,80}", recipient["id"]):
        problems.append("audience id is not a valid SQS batch entry id")
    phone = recipient["phone_number"]
    if not phone:
        problems.append("phone number is missing")
    elif not phone.startswith("+"):
        problems.append("phone number must start with '+' (E.164)")
    elif not re.fullmatch(r"\+[0-9]+", phone):
        problems.append("phone number may contain only the digits 0-9 after '+'")
    elif not 8 <= len(phone) - 1 <= 15:
        problems.append("phone number must have 8 to 15 digits")
    elif phone[1] == "0":
        problems.append("phone number must not start with 0 after '+'")
    attributes = recipient["attributes"]
    if attributes is not None and not isinstance(attributes, dict):
        problems.append("attributes must be a JSON object")
    kind = columns["message_type"]
    if kind == "template":
        for parameter in columns["template_parameters"]:
            oracle_fill(parameter["value"], recipient, problems)
    elif kind == "text":
        content = oracle_fill(columns["message_content"], recipient, problems)
        if content is None or not content.strip(WHITESPACE):
            problems.append("text message content is empty")
        elif len(content) > 4096:
            problems.append("text message is longer than 4096 characters")
    else:
        url = oracle_fill(columns["media_url"], recipient, problems)
        if url is not None and not HTTP_URL.fullmatch(url):
            problems.append("media URL must be an http(s) URL")
        caption = oracle_fill(columns.get("caption") or "", recipient, problems)
        if caption is not None and len(caption) > 1024:
            problems.append("caption is longer than 1024 characters")
        if kind == "audio" and caption:
            problems.append("audio messages take no caption")
    return problems


def oracle_size(payload: dict[str, Any]) -> int:
    """The payload's size in bytes as compact JSON, SQS's two refused characters escaped."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return len(text.encode()) + 3 * (text.count("\ufffe") + text.count("\uffff"))


def check_row(
    campaign_id: str,
    columns: dict[str, Any],
    recipient: dict[str, Any],
    payload: str | None,
    reason: str | None,
    max_bytes: int,
) -> None:
    """The row is what the spec's rules (`oracle_problems`) say: the recipient's first problem
    as its reason, or a schema-valid payload carrying exactly its values."""
    assert (payload is None) != (reason is None)
    if payload is not None:
        assert SQS_BODY_CHARACTERS.match(payload)
        payload_validator().validate(json.loads(payload))
        assert len(payload.encode()) <= max_bytes
    try:
        problems = oracle_problems(columns, recipient)
    except Unknowable:
        # A value the oracle does not render: at least a payload holds the recipient's own id
        # and phone number, and a reason is not a phone or attributes one it does not deserve.
        if payload is not None:
            parsed = json.loads(payload)
            assert parsed["to"] == recipient["phone_number"]
            assert parsed["campaignAudienceId"] == recipient["id"]
        return
    if problems:
        assert reason == problems[0], (problems, recipient)
        return
    expected = reference_payload(campaign_id, columns, recipient)
    size = oracle_size(expected)
    if size > max_bytes + SIZE_MARGIN:
        assert reason is not None and reason.startswith("payload is "), (reason, recipient)
    elif size <= max_bytes - SIZE_MARGIN:
        assert reason is None, (reason, recipient)  # a valid recipient is never failed
    if payload is not None:
        assert json.loads(payload) == expected


@settings(max_examples=200, deadline=None, database=None)
@given(
    campaign=st.sampled_from(sorted(PROPERTY_CAMPAIGNS)),
    people=st.lists(recipients(), max_size=10),
    ids=st.lists(st.one_of(st.uuids().map(str), st.text(max_size=90)), min_size=10, max_size=10),
    max_bytes=st.sampled_from([1024, 262_144]),
)
def test_build_payloads_never_raises_and_every_row_is_a_payload_or_a_reason(
    campaign: str, people: list[dict[str, Any]], ids: list[str], max_bytes: int
) -> None:
    """Any recipients: a schema-valid payload with exactly their values, or a reason."""
    columns = PROPERTY_CAMPAIGNS[campaign]
    rows = [person | {"id": audience_id} for person, audience_id in zip(people, ids, strict=False)]
    frame = build_payloads(
        campaign_message(CAMPAIGN_ID, columns),
        recipients_frame([recipient_row(row) for row in rows]),
        max_bytes,
    )
    assert frame["id"].to_list() == [row["id"] for row in rows]
    for row, payload, reason in zip(rows, frame["payload"], frame["failure_reason"], strict=True):
        check_row(CAMPAIGN_ID, columns, row, payload, reason, max_bytes)


@settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_recipients_through_the_job_keep_the_invariant(
    data: st.DataObject,
    store: CampaignStore,
    sqs_endpoint: str,
    make_queue: Callable[..., str],
    sqs_client: object,
) -> None:
    """Any recipients, run by the job into SQS: each queued exactly as built, or failed; no loss."""
    # PostgreSQL text columns cannot hold NUL; JSON attributes escape it and keep it.
    on_postgres = store.engine.dialect.name == "postgresql"
    campaign = data.draw(st.sampled_from(sorted(PROPERTY_CAMPAIGNS)), label="campaign")
    people = data.draw(
        st.lists(recipients(not on_postgres), min_size=1, max_size=8), label="people"
    )
    columns = PROPERTY_CAMPAIGNS[campaign]
    campaign_id = store.campaigns.add(
        organization_id=ORGANIZATION_ID, status="asset_generated", **columns
    )
    rows = [person | {"id": str(uuid.uuid4())} for person in people]
    store.campaigns.add_recipients(campaign_id, rows)
    queue = SqsQueue(
        queue_url=make_queue(fifo=False, MaximumMessageSize="1024"),
        region_name=REGION,
        endpoint_url=sqs_endpoint,
        max_concurrent_batches=2,
    )

    result = process_campaign_messages.execute_in_process(
        run_config=dg.RunConfig(ops={"claim_campaign": CampaignConfig(campaign_id=campaign_id)}),
        resources={"campaign_store": store, "sqs_queue": queue},
        raise_on_error=False,
    )

    assert result.success, [e.message for e in result.get_step_failure_events()]
    report = check_campaign_invariant(store, campaign_id, sqs_client, queue.queue_url, fifo=False)
    for row in rows:
        # What the run queued or why it failed the recipient, against the oracle directly.
        body, reason = report.bodies.get(row["id"]), report.failure_reasons.get(row["id"])
        check_row(campaign_id, columns, row, body, reason, 1024)
    assert report.queued + report.failed == len(rows)
    totals = JOB_EXAMPLES["PostgreSQL" if on_postgres else "SQLite"]
    totals.update(examples=1, recipients=len(rows), queued=report.queued, failed=report.failed)
