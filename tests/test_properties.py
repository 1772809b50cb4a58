"""Property-based tests (hypothesis): arbitrary recipients never break payload building or a run.

Recipients are drawn from strategies that mix valid E.164 numbers with junk, names and
attributes from arbitrary Unicode text (NUL, control characters, emoji, huge strings) and
attributes as arbitrary JSON values. `build_payloads` must never raise, and each row must be
either a schema-valid payload whose JSON carries exactly the recipient's values, or a reason.
A smaller property runs the real job on SQLite and PostgreSQL into moto's SQS server and checks
`tests/invariant.py` after every example. The example database is off: nothing is written to
the working tree; a failure prints its minimal example.
"""

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import dagster as dg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaign_pipeline.jobs import process_campaign_messages
from campaign_pipeline.ops import CampaignConfig
from campaign_pipeline.payloads import PLACEHOLDER, build_payloads, recipients_frame
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from tests.conftest import REGION
from tests.invariant import SQS_BODY_CHARACTERS, check_campaign_invariant
from tests.test_hostile_input import (
    ORGANIZATION_ID,
    campaign_message,
    recipient_row,
    reference_payload,
)
from tests.test_payloads import payload_validator

CAMPAIGN_ID = "123e4567-e89b-12d3-a456-426614174001"
E164 = re.compile(r"\+[1-9][0-9]{7,14}")
BATCH_ENTRY_ID = re.compile(r"[A-Za-z0-9_-]{1,80}")
PHONE_REASONS = {
    "phone number is missing",
    "phone number must start with '+' (E.164)",
    "phone number may contain only the digits 0-9 after '+'",
    "phone number must have 8 to 15 digits",
    "phone number must not start with 0 after '+'",
}

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


def referenceable(value: Any) -> bool:
    """Whether the plain-Python reference knows how `{{key}}` renders this value."""
    return isinstance(value, str | bool | int)


def used_values(columns: dict[str, Any], recipient: dict[str, Any]) -> list[Any]:
    """The values the campaign's placeholders read from this recipient."""
    texts_used = [columns.get(key) or "" for key in ("message_content", "media_url", "caption")]
    texts_used += [p["value"] for p in columns.get("template_parameters") or []]
    attributes = recipient["attributes"] if isinstance(recipient["attributes"], dict) else {}
    return [
        recipient[key] if key in ("name", "phone_number") else attributes.get(key)
        for text in texts_used
        for key in PLACEHOLDER.findall(text)
    ]


def check_row(
    columns: dict[str, Any], recipient: dict[str, Any], payload: str | None, reason: str | None
) -> None:
    """A row is a valid payload carrying exactly the recipient's values, or has a reason."""
    assert (payload is None) != (reason is None)
    valid_id = bool(BATCH_ENTRY_ID.fullmatch(recipient["id"]))
    valid_phone = isinstance(recipient["phone_number"], str) and bool(
        E164.fullmatch(recipient["phone_number"])
    )
    if reason is not None:
        assert reason.strip()
        attributes = recipient["attributes"]
        if valid_id and not valid_phone:
            assert reason in PHONE_REASONS
        elif valid_id and attributes is not None and not isinstance(attributes, dict):
            assert reason == "attributes must be a JSON object"
        return
    assert payload is not None
    assert valid_id and valid_phone
    assert SQS_BODY_CHARACTERS.match(payload)
    parsed = json.loads(payload)
    payload_validator().validate(parsed)
    assert parsed["to"] == recipient["phone_number"]
    assert parsed["campaignAudienceId"] == recipient["id"]
    values = used_values(columns, recipient)
    assert all(value not in (None, "") for value in values)
    if all(referenceable(value) for value in values):
        assert parsed == reference_payload(parsed["campaignId"], columns, recipient)


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
        check_row(columns, row, payload, reason)
        if payload is not None:
            assert len(payload.encode()) <= max_bytes


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
    moto_endpoint: str,
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
    campaign_id = store.add_campaign(
        organization_id=ORGANIZATION_ID, status="asset_generated", **columns
    )
    rows = [person | {"id": str(uuid.uuid4())} for person in people]
    store.add_recipients(campaign_id, rows)
    queue = SqsQueue(
        queue_url=make_queue(fifo=False, MaximumMessageSize="1024"),
        region_name=REGION,
        endpoint_url=moto_endpoint,
        max_concurrent_batches=2,
    )

    result = process_campaign_messages.execute_in_process(
        run_config=dg.RunConfig(ops={"claim_campaign": CampaignConfig(campaign_id=campaign_id)}),
        resources={"campaign_store": store, "sqs_queue": queue},
        raise_on_error=False,
    )

    assert result.success, [e.message for e in result.get_step_failure_events()]
    report = check_campaign_invariant(store, campaign_id, sqs_client, queue.queue_url, fifo=False)
    built = build_payloads(
        campaign_message(campaign_id, columns),
        recipients_frame([recipient_row(row) for row in rows]),
        1024,
    )
    for row, payload, reason in zip(rows, built["payload"], built["failure_reason"], strict=True):
        check_row(columns, row, payload, reason)
        assert report.failure_reasons.get(row["id"]) == reason
        assert report.bodies.get(row["id"]) == payload
    assert report.queued + report.failed == len(rows)
