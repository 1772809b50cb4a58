"""Hostile and broken input: each bad recipient or campaign gets its exact reason, the rest goes on.

The corpus is one table of recipients (phone numbers, names, attributes, media URLs, lengths,
sizes) with the reason each must produce, or none when it must be queued as it is. It is checked
against `build_payloads` alone, then end to end: each campaign mixes its hostile recipients with
good ones and runs through `process_campaign_messages` on SQLite and PostgreSQL into moto's SQS
server (a FIFO queue whose MaximumMessageSize is 1024, so size limits bite), followed by
`tests/support/invariant.py` (whose check is itself tested against each kind of breakage here).
Campaign-level breakage (unknown message type, malformed placeholders or template parameters,
an empty organization id, a bad or unknown id) fails the run with one clear reason, and
`campaign-pipeline process` says it in one line, never with a traceback. A campaign without
recipients fails with that reason.
"""

import json
import os
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from campaign_pipeline.defs.jobs import process_campaign_messages
from campaign_pipeline.defs.ops import CampaignConfig
from campaign_pipeline.payloads import (
    PLACEHOLDER,
    CampaignMessage,
    build_payloads,
    parse_template_parameters,
    recipients_frame,
)
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.store.schema import campaign_audience
from tests.conftest import REGION, run_cli
from tests.support.invariant import check_campaign_invariant, drain_queue
from tests.support.payload_schema import assert_valid_payloads

ORGANIZATION_ID = "123e4567-e89b-12d3-a456-426614174000"


@pytest.fixture(autouse=True)
def no_preflight_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """These campaigns are mostly hostile on purpose: the guard would hold them back."""
    monkeypatch.setenv("CAMPAIGN_MAX_INVALID_FRACTION", "1")


# One campaign id for the unit cases, so payload sizes in reasons are the same end to end.
CAMPAIGN_ID = "123e4567-e89b-12d3-a456-426614174001"
# The queue's MaximumMessageSize in these tests: small, so a long name outgrows it.
MAX_BYTES = 1024
GOOD_PHONE = "+15550000001"
HUGE = "x" * 102_400  # 100 KB
# Digits of other scripts, which E.164 does not take.
ARABIC_INDIC_DIGITS = str.maketrans("0123456789", "".join(chr(0x0660 + d) for d in range(10)))
FULLWIDTH_DIGITS = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))

CAMPAIGNS: dict[str, dict[str, Any]] = {
    "text": {"message_type": "text", "message_content": "Hi {{name}}, news from {{city}}!"},
    "template": {
        "message_type": "template",
        "template_name": "welcome_message",
        "template_language": "en",
        "template_parameters": [
            {"type": "header", "valueType": "text", "value": "Hi {{name}}"},
            {"type": "body", "valueType": "text", "value": "Your code: {{code}}"},
            {"type": "button", "valueType": "payload", "value": {"id": 7}},
        ],
    },
    "image": {"message_type": "image", "media_url": "{{url}}", "caption": "For {{name}}"},
    "audio": {
        "message_type": "audio",
        "media_url": "https://cdn.example.com/a/{{track}}.ogg",
        "caption": "",
    },
    "audio_captioned": {
        "message_type": "audio",
        "media_url": "https://cdn.example.com/a/jingle.ogg",
        "caption": "Listen, {{name}}",
    },
}

# A recipient every campaign queues (audio_captioned queues nobody: it has a caption).
GOOD_ATTRIBUTES: dict[str, dict[str, Any]] = {
    "text": {"city": "Lisboa"},
    "template": {"code": "A7"},
    "image": {"url": "https://cdn.example.com/offers/1.jpg"},
    "audio": {"track": "jingle"},
    "audio_captioned": {},
}

PHONE_DIGITS = "phone number may contain only the digits 0-9 after '+'"
PHONE_LENGTH = "phone number must have 8 to 15 digits"
PHONE_PLUS = "phone number must start with '+' (E.164)"
NOT_AN_OBJECT = "attributes must be a JSON object"
BAD_URL = "media URL must be an http(s) URL"
TEXT_TOO_LONG = "text message is longer than 4096 characters"
AWKWARD = {
    "quotes": 'Ana "the boss" O\'Neil',
    "backslashes": "C:\\new\\table \\u0041 \\",
    "newlines": "Ana\nsecond line\r\n\ttabbed",
    "emoji": "Ana 🎉👩🏽‍💻🇵🇹",
    "rtl": "مرحبا \u200f שלום",
    "nul": "Ana\x00Bob",
    "sql": "Robert'); DROP TABLE campaign_audience;--",
    "placeholders": "{{city}} {{ name }} {{ and }}",
    "noncharacters": "Ana\ufffe\uffff",
}


def too_large(size: int) -> str:
    return f"payload is {size} bytes, over the queue's maximum message size of {MAX_BYTES} bytes"


_OWN_PHONES: dict[str, str] = {}


def own_phone(audience_id: str) -> str:
    """A valid number no other recipient of these tests has: one number is one person, and a
    run sends a number once (the others would be failed as duplicates)."""
    return _OWN_PHONES.setdefault(audience_id, f"+1555{len(_OWN_PHONES) + 100:07d}")


@dataclass(frozen=True)
class Case:
    """A recipient of `campaign`: the good recipient with `fields` changed, and its reason."""

    campaign: str
    fields: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None

    def recipient(self, audience_id: str) -> dict[str, Any]:
        return {
            "id": audience_id,
            "phone_number": own_phone(audience_id),
            "name": "Ana",
            "attributes": GOOD_ATTRIBUTES[self.campaign],
        } | self.fields

    @property
    def has_nul_text(self) -> bool:
        """PostgreSQL refuses NUL in text columns (JSON escapes it in attributes)."""
        return any(
            isinstance(value, str) and "\x00" in value
            for key, value in self.fields.items()
            if key != "attributes"
        )


def city(value: Any) -> dict[str, Any]:
    return {"attributes": {"city": value}}


CORPUS: dict[str, Case] = {
    # Phone numbers
    "phone-empty": Case("text", {"phone_number": ""}, "phone number is missing"),
    "phone-null": Case("text", {"phone_number": None}, "phone number is missing"),
    "phone-too-short": Case("text", {"phone_number": "+1234567"}, PHONE_LENGTH),
    "phone-too-long": Case("text", {"phone_number": "+1234567890123456"}, PHONE_LENGTH),
    "phone-letters": Case("text", {"phone_number": "+1555CALLNOW"}, PHONE_DIGITS),
    "phone-spaces": Case("text", {"phone_number": "+1 555 000 0001"}, PHONE_DIGITS),
    "phone-newline": Case("text", {"phone_number": "+1555000\n0001"}, PHONE_DIGITS),
    "phone-trailing-newline": Case("text", {"phone_number": GOOD_PHONE + "\n"}, PHONE_DIGITS),
    "phone-no-plus": Case("text", {"phone_number": "15550000001"}, PHONE_PLUS),
    "phone-00-prefix": Case("text", {"phone_number": "0015550000001"}, PHONE_PLUS),
    "phone-leading-space": Case("text", {"phone_number": " " + GOOD_PHONE}, PHONE_PLUS),
    "phone-leading-zero": Case(
        "text", {"phone_number": "+05550000001"}, "phone number must not start with 0 after '+'"
    ),
    "phone-arabic-indic-digits": Case(
        "text", {"phone_number": GOOD_PHONE.translate(ARABIC_INDIC_DIGITS)}, PHONE_DIGITS
    ),
    "phone-fullwidth-digits": Case(
        "text", {"phone_number": GOOD_PHONE.translate(FULLWIDTH_DIGITS)}, PHONE_DIGITS
    ),
    "phone-nul": Case("text", {"phone_number": "+1555000\x000001"}, PHONE_DIGITS),
    "phone-sql": Case("text", {"phone_number": "'; DROP TABLE campaigns; --"}, PHONE_PLUS),
    # Audience ids SendMessageBatch cannot take
    "id-with-spaces": Case(
        "text", {"id": "bad id'; --"}, "audience id is not a valid SQS batch entry id"
    ),
    # Names: awkward ones are sent exactly as they are; missing ones fail where used
    **{f"name-{kind}": Case("text", {"name": text}) for kind, text in AWKWARD.items()},
    "name-empty": Case("text", {"name": ""}, "no value for placeholder {{name}}"),
    "name-null": Case("text", {"name": None}, "no value for placeholder {{name}}"),
    "name-100kb-text": Case("text", {"name": HUGE}, TEXT_TOO_LONG),
    "name-long-over-queue-size": Case("text", {"name": "y" * 900}, too_large(1152)),
    "name-100kb-template": Case("template", {"name": HUGE}, too_large(102_836)),
    "name-100kb-caption": Case("image", {"name": HUGE}, "caption is longer than 1024 characters"),
    # Attributes
    "attributes-list": Case("text", {"attributes": [1, 2]}, NOT_AN_OBJECT),
    "attributes-string": Case("text", {"attributes": "Lisboa"}, NOT_AN_OBJECT),
    "attributes-number": Case("text", {"attributes": 42}, NOT_AN_OBJECT),
    "attributes-json-null": Case("text", {"attributes": sa.JSON.NULL}, NOT_AN_OBJECT),
    "attributes-absent": Case("text", {"attributes": None}, "no value for placeholder {{city}}"),
    "attribute-empty": Case("text", city(""), "no value for placeholder {{city}}"),
    "attribute-null": Case("text", city(None), "no value for placeholder {{city}}"),
    "attribute-missing": Case(
        "text", {"attributes": {"town": "Porto"}}, "no value for placeholder {{city}}"
    ),
    "attribute-100kb": Case("text", city(HUGE), TEXT_TOO_LONG),
    "attribute-number": Case("text", city(42)),
    "attribute-odd-keys": Case(
        "text", {"attributes": {"city": "Porto", "'; DROP": "x", "": "y", "k\x00": "z"}}
    ),
    **{f"attribute-{kind}": Case("text", city(text)) for kind, text in AWKWARD.items()},
    # Template parameters filled per recipient
    "template-code-missing": Case(
        "template", {"attributes": {}}, "no value for placeholder {{code}}"
    ),
    "template-code-empty": Case(
        "template", {"attributes": {"code": ""}}, "no value for placeholder {{code}}"
    ),
    "template-code-sql": Case("template", {"attributes": {"code": "1; DROP TABLE x"}}),
    # Media URLs filled per recipient
    "url-ftp": Case("image", {"attributes": {"url": "ftp://files.example.com/a.jpg"}}, BAD_URL),
    "url-javascript": Case("image", {"attributes": {"url": "javascript:alert(1)"}}, BAD_URL),
    "url-no-host": Case("image", {"attributes": {"url": "https://"}}, BAD_URL),
    "url-protocol-relative": Case(
        "image", {"attributes": {"url": "//cdn.example.com/a.jpg"}}, BAD_URL
    ),
    "url-space": Case("image", {"attributes": {"url": "https://cdn.example.com/a b.jpg"}}, BAD_URL),
    "url-newline": Case(
        "image", {"attributes": {"url": "https://cdn.example.com/a.jpg\n"}}, BAD_URL
    ),
    "url-control-character": Case(
        "image", {"attributes": {"url": "https://cdn.example.com/a\x1fb.jpg"}}, BAD_URL
    ),
    "url-nul": Case("image", {"attributes": {"url": "https://cdn.example.com/a\x00.jpg"}}, BAD_URL),
    "url-number": Case("image", {"attributes": {"url": 42}}, BAD_URL),
    "url-missing": Case("image", {"attributes": {}}, "no value for placeholder {{url}}"),
    "url-quotes": Case(
        "image", {"attributes": {"url": "https://cdn.example.com/a.jpg?q=\"x\"&y='z'\\"}}
    ),
    # Audio takes no caption, but keeps the spec's empty one
    "audio-track-missing": Case("audio", {"attributes": {}}, "no value for placeholder {{track}}"),
    "audio-caption": Case("audio_captioned", {}, "audio messages take no caption"),
    "audio-caption-without-value": Case(
        "audio_captioned", {"name": None}, "no value for placeholder {{name}}"
    ),
}


def audience_id(case_id: str) -> str:
    """A stable audience id per case (the case's own when it sets one)."""
    return CORPUS[case_id].fields.get("id") or str(uuid.uuid5(uuid.NAMESPACE_URL, case_id))


def campaign_message(campaign_id: str, columns: dict[str, Any]) -> CampaignMessage:
    """The message the store makes of these campaign columns."""
    return CampaignMessage(
        campaign_id=campaign_id,
        organization_id=ORGANIZATION_ID,
        message_type=columns["message_type"],
        template_name=columns.get("template_name"),
        template_language=columns.get("template_language"),
        template_parameters=parse_template_parameters(columns.get("template_parameters")),
        message_content=columns.get("message_content"),
        media_url=columns.get("media_url"),
        caption=columns.get("caption"),
    )


def attributes_text(attributes: Any) -> str | None:
    """Attributes as the store returns them: JSON text, or None when absent."""
    if attributes is None:
        return None
    return "null" if attributes is sa.JSON.NULL else json.dumps(attributes)


def recipient_row(recipient: dict[str, Any]) -> tuple[Any, ...]:
    return (
        recipient["id"],
        recipient["phone_number"],
        recipient["name"],
        attributes_text(recipient["attributes"]),
    )


def build_one(campaign_id: str, columns: dict[str, Any], recipient: dict[str, Any]) -> tuple:
    """(payload, failure_reason) of one recipient, every valid payload schema-checked."""
    frame = build_payloads(
        campaign_message(campaign_id, columns),
        recipients_frame([recipient_row(recipient)]),
        MAX_BYTES,
    )
    assert_valid_payloads(frame)
    return frame["payload"][0], frame["failure_reason"][0]


def placeholder_value(key: str, recipient: dict[str, Any]) -> str:
    """What `{{key}}` becomes for this recipient (strings, integers and booleans only)."""
    if key in ("name", "phone_number"):
        return recipient[key]
    value = recipient["attributes"][key]
    if isinstance(value, bool):
        return "true" if value else "false"
    assert isinstance(value, (str, int)), f"no reference value for {value!r}"
    return str(value)


def reference_fill(text: str | None, recipient: dict[str, Any]) -> str:
    """`text` personalised for the recipient, in plain Python."""
    return PLACEHOLDER.sub(lambda m: placeholder_value(m.group(1), recipient), text or "")


def reference_payload(
    campaign_id: str, columns: dict[str, Any], recipient: dict[str, Any]
) -> dict[str, Any]:
    """The payload the spec asks for, built in plain Python for a valid recipient."""
    fill = partial(reference_fill, recipient=recipient)
    head = {
        "organizationId": ORGANIZATION_ID,
        "campaignId": campaign_id,
        "campaignAudienceId": recipient["id"],
        "to": recipient["phone_number"],
    }
    message_type = columns["message_type"]
    if message_type == "template":
        return head | {
            "templateName": columns["template_name"],
            "templateLanguage": columns["template_language"],
            "templateParameters": [
                p | {"value": fill(p["value"]) if isinstance(p["value"], str) else p["value"]}
                for p in columns.get("template_parameters") or []
            ],
        }
    if message_type == "text":
        return head | {"messageType": "text", "messageContent": fill(columns["message_content"])}
    return head | {
        "messageType": message_type,
        "mediaUrl": fill(columns["media_url"]),
        "caption": fill(columns.get("caption")),
    }


@pytest.mark.parametrize("case_id", sorted(CORPUS))
def test_recipient_gets_its_exact_reason_or_is_sent_as_is(case_id: str) -> None:
    """`build_payloads` fails each hostile recipient with its reason, or sends it exactly."""
    case = CORPUS[case_id]
    columns = CAMPAIGNS[case.campaign]
    recipient = case.recipient(audience_id(case_id))
    payload, reason = build_one(CAMPAIGN_ID, columns, recipient)
    assert reason == case.reason
    if case.reason is None:
        assert json.loads(payload) == reference_payload(CAMPAIGN_ID, columns, recipient)


@pytest.mark.parametrize("campaign", sorted(CAMPAIGNS))
def test_every_campaign_has_hostile_cases_and_a_good_recipient(campaign: str) -> None:
    """The corpus covers each campaign; its good recipient is queued (audio with caption: none)."""
    assert any(case.campaign == campaign for case in CORPUS.values())
    _, reason = build_one(CAMPAIGN_ID, CAMPAIGNS[campaign], Case(campaign).recipient("good"))
    assert (reason is None) == (campaign != "audio_captioned"), reason


def test_noncharacters_are_escaped_for_sqs() -> None:
    """U+FFFE and U+FFFF, which SQS refuses in a body, travel as JSON escapes."""
    recipient = CORPUS["name-noncharacters"].recipient("a")
    payload, _ = build_one(CAMPAIGN_ID, CAMPAIGNS["text"], recipient)
    assert "\ufffe" not in payload and "\uffff" not in payload
    assert "\\ufffe\\uffff" in payload
    assert json.loads(payload)["messageContent"].startswith("Hi Ana\ufffe\uffff,")


# End to end


def run_job(store: CampaignStore, queue: SqsQueue, campaign_id: str) -> dg.ExecuteInProcessResult:
    return process_campaign_messages.execute_in_process(
        run_config=dg.RunConfig(ops={"claim_campaign": CampaignConfig(campaign_id=campaign_id)}),
        resources={"campaign_store": store, "sqs_queue": queue},
        raise_on_error=False,
    )


def failure_description(result: dg.ExecuteInProcessResult) -> str:
    (event,) = result.get_step_failure_events()
    return event.step_failure_data.user_failure_data.description or ""


@pytest.fixture
def small_queue(sqs_endpoint: str, make_queue: Callable[..., str]) -> SqsQueue:
    """A FIFO queue whose MaximumMessageSize is 1024 bytes."""
    return SqsQueue(
        queue_url=make_queue(fifo=True, MaximumMessageSize=str(MAX_BYTES)),
        region_name=REGION,
        endpoint_url=sqs_endpoint,
    )


def is_postgres(store: CampaignStore) -> bool:
    return store.engine.dialect.name == "postgresql"


@pytest.mark.parametrize("campaign", sorted(CAMPAIGNS))
def test_hostile_recipients_fail_alone_and_good_ones_are_queued_exactly(
    campaign: str, store: CampaignStore, small_queue: SqsQueue, sqs_client: object
) -> None:
    """Through the job: each hostile recipient failed with its reason, the rest queued as built."""
    columns = CAMPAIGNS[campaign]
    campaign_id = store.campaigns.add(
        organization_id=ORGANIZATION_ID, name=campaign, status="asset_generated", **columns
    )
    cases = {
        case_id: case
        for case_id, case in CORPUS.items()
        if case.campaign == campaign and not (is_postgres(store) and case.has_nul_text)
    }
    recipients = {case_id: case.recipient(audience_id(case_id)) for case_id, case in cases.items()}
    good = [Case(campaign).recipient(f"good-{i}") | {"name": f"Good {i}"} for i in range(3)]
    store.campaigns.add_recipients(campaign_id, [*recipients.values(), *good])

    result = run_job(store, small_queue, campaign_id)

    assert result.success, result.get_step_failure_events()
    report = check_campaign_invariant(
        store, campaign_id, sqs_client, small_queue.queue_url, fifo=True
    )
    for case_id, case in cases.items():
        assert report.failure_reasons.get(recipients[case_id]["id"]) == case.reason, case_id
    sent = [recipients[case_id] for case_id, case in cases.items() if case.reason is None]
    if campaign == "audio_captioned":  # its caption fails even the good recipients
        assert {report.failure_reasons[r["id"]] for r in good} == {"audio messages take no caption"}
    else:
        sent += good
    assert set(report.bodies) == {recipient["id"] for recipient in sent}
    for recipient in sent:
        expected, reason = build_one(campaign_id, columns, recipient)
        assert reason is None
        assert report.bodies[recipient["id"]] == expected
        assert json.loads(expected) == reference_payload(campaign_id, columns, recipient)
    stored = store.campaigns.get(campaign_id)
    assert (stored["status"], stored["queued_count"], stored["failed_count"]) == (
        "ready_to_launch",
        len(sent),
        len(cases) + len(good) - len(sent),
    )


# The invariant check itself


def set_outcome(store: CampaignStore, audience_id: str, **values: Any) -> None:
    with store.engine.begin() as connection:
        connection.execute(
            campaign_audience.update().where(campaign_audience.c.id == audience_id).values(**values)
        )


@pytest.mark.parametrize(
    ("breakage", "fifo", "message"),
    [
        ("lost", False, "is not in the queue"),
        ("sent-twice", True, "more than once on a FIFO queue"),
        ("duplicate-on-standard", False, "over the 0 allowed"),
        ("other-campaign", False, "is not of campaign"),
        ("not-a-payload", False, "breaks the payload schema"),
        ("still-pending", False, "still pending"),
        ("failed-without-reason", False, "has no reason"),
        ("message-for-failed", False, "for a failed recipient"),
    ],
)
def test_invariant_check_catches_each_kind_of_breakage(
    breakage: str,
    fifo: bool,
    message: str,
    sqlite_store: CampaignStore,
    make_queue: Callable[..., str],
    sqs_client: Any,
) -> None:
    """`check_campaign_invariant` fails on every way a run could lose or duplicate a message."""
    columns = CAMPAIGNS["text"]
    campaign_id = sqlite_store.campaigns.add(
        organization_id=ORGANIZATION_ID, status="ready_to_launch", **columns
    )
    recipient = Case("text").recipient("r1")
    sqlite_store.campaigns.add_recipients(campaign_id, [recipient])
    body, _ = build_one(campaign_id, columns, recipient)
    queue_url = make_queue(fifo=fifo)

    def send(text: str, dedup: str = "1") -> str:
        fifo_fields = {"MessageGroupId": "g", "MessageDeduplicationId": dedup} if fifo else {}
        return sqs_client.send_message(QueueUrl=queue_url, MessageBody=text, **fifo_fields)[
            "MessageId"
        ]

    outcome: dict[str, Any] = {"status": "ready_to_send"}
    if breakage == "lost":
        outcome["sqs_message_id"] = "never-sent"
    elif breakage in ("sent-twice", "duplicate-on-standard"):
        outcome["sqs_message_id"] = send(body)
        send(body, dedup="2")
    elif breakage == "other-campaign":
        outcome["sqs_message_id"] = send(body)
        send(body.replace(campaign_id, str(uuid.uuid4())))
    elif breakage == "not-a-payload":
        outcome["sqs_message_id"] = send(json.dumps(json.loads(body) | {"extra": 1}))
    elif breakage == "still-pending":
        outcome = {}
    elif breakage == "failed-without-reason":
        outcome = {"status": "failed", "failure_reason": " "}
    else:
        outcome = {"status": "failed", "failure_reason": "phone number is missing"}
        send(body)
    if outcome:
        set_outcome(sqlite_store, "r1", **outcome)

    with pytest.raises(AssertionError, match=message):
        check_campaign_invariant(sqlite_store, campaign_id, sqs_client, queue_url, fifo=fifo)


def test_invariant_allows_what_the_crash_window_documents(
    sqlite_store: CampaignStore, make_queue: Callable[..., str], sqs_client: Any
) -> None:
    """Pending recipients (one already in the queue) and a bounded duplicate, when allowed."""
    columns = CAMPAIGNS["text"]
    campaign_id = sqlite_store.campaigns.add(
        organization_id=ORGANIZATION_ID, status="ready_to_launch", **columns
    )
    recipients = [Case("text").recipient(f"r{i}") for i in range(3)]
    sqlite_store.campaigns.add_recipients(campaign_id, recipients)
    queue_url = make_queue(fifo=False)
    bodies = [build_one(campaign_id, columns, recipient)[0] for recipient in recipients]
    first = sqs_client.send_message(QueueUrl=queue_url, MessageBody=bodies[0])["MessageId"]
    sqs_client.send_message(QueueUrl=queue_url, MessageBody=bodies[0])
    sqs_client.send_message(QueueUrl=queue_url, MessageBody=bodies[1])
    set_outcome(sqlite_store, "r0", status="ready_to_send", sqs_message_id=first)

    report = check_campaign_invariant(
        sqlite_store,
        campaign_id,
        sqs_client,
        queue_url,
        fifo=False,
        expect_pending_allowed=True,
        max_duplicates=1,
    )

    assert (report.queued, report.pending, report.duplicates) == (1, 2, {"r0": 1})
    assert (report.pending_in_queue, report.bodies) == (["r1"], {"r0": bodies[0]})


# Campaign-level breakage


@dataclass(frozen=True)
class BrokenCampaign:
    """Campaign columns no recipient can be sent with, and the reason the run gives."""

    columns: dict[str, Any]
    reason: str


BROKEN_CAMPAIGNS = {
    "unknown-message-type": BrokenCampaign(
        {"message_type": "fax", "message_content": "Hi"},
        "unknown message type 'fax'; expected one of template, text, image, video, document, audio",
    ),
    "message-type-wrong-case": BrokenCampaign(
        {"message_type": "Text", "message_content": "Hi"},
        "unknown message type 'Text'; expected one of template, text, image, video, document, "
        "audio",
    ),
    "malformed-placeholder": BrokenCampaign(
        {"message_type": "text", "message_content": "Hi {{first-name}}"},
        "malformed placeholder '{{first-name}}': placeholders are {{name}}, {{phone_number}} "
        "or {{key}} of the attributes (letters, digits, underscores)",
    ),
    "empty-placeholder": BrokenCampaign(
        {"message_type": "image", "media_url": "https://cdn.example.com/a.jpg", "caption": "{{}}"},
        "malformed placeholder '{{}}': placeholders are {{name}}, {{phone_number}} "
        "or {{key}} of the attributes (letters, digits, underscores)",
    ),
    "template-parameter-unknown-type": BrokenCampaign(
        {
            "message_type": "template",
            "template_name": "t",
            "template_language": "en",
            "template_parameters": [{"type": "footer", "valueType": "text", "value": "x"}],
        },
        "template parameter 1 has type 'footer'; expected one of header, body, button",
    ),
    "template-parameter-without-value": BrokenCampaign(
        {
            "message_type": "template",
            "template_name": "t",
            "template_language": "en",
            "template_parameters": [
                {"type": "body", "valueType": "text", "value": "{{name}}"},
                {"type": "body", "valueType": "text"},
            ],
        },
        "template parameter 2 has no value",
    ),
    "template-parameters-not-a-list": BrokenCampaign(
        {
            "message_type": "template",
            "template_name": "t",
            "template_language": "en",
            "template_parameters": {"type": "body", "valueType": "text", "value": "x"},
        },
        "template parameters must be a JSON list",
    ),
    "template-parameter-placeholder-malformed": BrokenCampaign(
        {
            "message_type": "template",
            "template_name": "t",
            "template_language": "en",
            "template_parameters": [{"type": "body", "valueType": "text", "value": "{{ a b }}"}],
        },
        "malformed placeholder '{{ a b }}': placeholders are {{name}}, {{phone_number}} "
        "or {{key}} of the attributes (letters, digits, underscores)",
    ),
}


def add_broken_campaign(store: CampaignStore, columns: dict[str, Any], **fields: Any) -> str:
    campaign_id = store.campaigns.add(
        **{"organization_id": ORGANIZATION_ID, "name": "broken", "status": "asset_generated"}
        | fields,
        **columns,
    )
    store.campaigns.add_recipients(campaign_id, [{"phone_number": GOOD_PHONE, "name": "Ana"}])
    return campaign_id


@pytest.mark.parametrize("broken", sorted(BROKEN_CAMPAIGNS))
def test_campaign_that_cannot_be_sent_fails_with_its_reason(
    broken: str, store: CampaignStore, make_sqs_queue: Callable[..., SqsQueue], sqs_client: object
) -> None:
    """The run fails at the claim with the reason; the campaign is failed, nothing queued."""
    case = BROKEN_CAMPAIGNS[broken]
    campaign_id = add_broken_campaign(store, case.columns)
    queue = make_sqs_queue(fifo=True)

    result = run_job(store, queue, campaign_id)

    assert not result.success
    assert failure_description(result) == f"campaign {campaign_id} cannot be sent: {case.reason}"
    stored = store.campaigns.get(campaign_id)
    assert (stored["status"], stored["last_error"]) == ("failed", case.reason)
    report = check_campaign_invariant(
        store, campaign_id, sqs_client, queue.queue_url, fifo=True, expect_pending_allowed=True
    )
    assert (report.pending, report.messages) == (1, [])


def test_campaign_without_organization_id_fails_with_its_reason(
    sqlite_store: CampaignStore, make_sqs_queue: Callable[..., SqsQueue], sqs_client: object
) -> None:
    """An empty organization id (every payload's first field) fails the campaign, not SQS."""
    campaign_id = add_broken_campaign(
        sqlite_store, CAMPAIGNS["text"] | {"message_content": "Hi"}, organization_id=""
    )
    queue = make_sqs_queue(fifo=True)
    result = run_job(sqlite_store, queue, campaign_id)
    assert failure_description(result) == (
        f"campaign {campaign_id} cannot be sent: organization id is missing"
    )
    assert drain_queue(sqs_client, queue.queue_url) == []


@pytest.mark.parametrize(
    ("campaign_id", "reason"),
    [
        pytest.param("campaign-42", "campaign id 'campaign-42' is not a UUID", id="not-a-uuid"),
        pytest.param("", "campaign id '' is not a UUID", id="empty"),
        pytest.param(
            "'; DROP TABLE campaigns; --",
            'campaign id "\'; DROP TABLE campaigns; --" is not a UUID',
            id="sql",
        ),
        pytest.param(
            "00000000-0000-4000-8000-000000000000",
            "campaign 00000000-0000-4000-8000-000000000000 does not exist",
            id="unknown",
        ),
    ],
)
def test_bad_or_unknown_campaign_id_fails_the_run_with_one_reason(
    campaign_id: str, reason: str, store: CampaignStore, make_sqs_queue: Callable[..., SqsQueue]
) -> None:
    """A malformed or unknown id fails the claim with a one-line reason and touches nothing."""
    result = run_job(store, make_sqs_queue(fifo=True), campaign_id)
    assert not result.success
    assert failure_description(result) == reason
    with store.engine.connect() as connection:
        assert connection.scalar(sa.select(sa.func.count()).select_from(campaign_audience)) == 0


def test_campaign_without_recipients_gets_a_clear_reason(
    store: CampaignStore, make_sqs_queue: Callable[..., SqsQueue], sqs_client: object
) -> None:
    """A campaign with no audience at all is refused with a reason naming that; nothing sent."""
    campaign_id = store.campaigns.add(
        organization_id=ORGANIZATION_ID, status="asset_generated", **CAMPAIGNS["text"]
    )
    queue = make_sqs_queue(fifo=True)
    result = run_job(store, queue, campaign_id)
    assert not result.success
    assert "campaign has no recipients" in failure_description(result)
    campaign = store.campaigns.get(campaign_id)
    assert (campaign["status"], campaign["last_error"]) == ("failed", "campaign has no recipients")
    report = check_campaign_invariant(store, campaign_id, sqs_client, queue.queue_url, fifo=True)
    assert (report.queued, report.failed, report.pending, report.messages) == (0, 0, 0, [])


# The command line

DAGSTER_YAML = "telemetry:\n  enabled: false\n"


@pytest.fixture
def cli_env(
    tmp_path: Path, sqlite_store: CampaignStore, sqs_endpoint: str, make_queue: Callable[..., str]
) -> dict[str, str]:
    """The environment of `campaign-pipeline process` on the SQLite store and a new queue."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    return env | {
        "DAGSTER_HOME": str(home),
        "CAMPAIGN_MAX_INVALID_FRACTION": "1",
        "CAMPAIGN_DATABASE_URL": sqlite_store.database_url,
        "AWS_ENDPOINT_URL_SQS": sqs_endpoint,
        "AWS_SQS_QUEUE_URL": make_queue(fifo=True),
    }


def run_process(campaign_id: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return run_cli("process", campaign_id, env=env, cwd=cwd)


@pytest.mark.parametrize(
    ("broken", "status", "expected"),
    [
        pytest.param(
            "unknown-message-type",
            1,
            "failed in step claim_campaign: campaign {id} cannot be sent: "
            + BROKEN_CAMPAIGNS["unknown-message-type"].reason,
            id="unknown-message-type",
        ),
        pytest.param(
            "malformed-placeholder",
            1,
            "failed in step claim_campaign: campaign {id} cannot be sent: "
            + BROKEN_CAMPAIGNS["malformed-placeholder"].reason,
            id="malformed-placeholder",
        ),
        pytest.param("not-a-uuid", 2, "error: campaign id 'campaign-42' is not a UUID", id="id"),
        pytest.param(
            "unknown", 2, "error: campaign {id} does not exist in sqlite:///", id="unknown"
        ),
    ],
)
def test_process_command_reports_a_broken_campaign_in_one_line(
    broken: str,
    status: int,
    expected: str,
    cli_env: dict[str, str],
    sqlite_store: CampaignStore,
    tmp_path: Path,
) -> None:
    """Exit 1 for a run the campaign fails, 2 for a bad id; one line on stderr, no traceback."""
    if broken == "not-a-uuid":
        campaign_id = "campaign-42"
    elif broken == "unknown":
        campaign_id = str(uuid.uuid4())
    else:
        campaign_id = add_broken_campaign(sqlite_store, BROKEN_CAMPAIGNS[broken].columns)

    result = run_process(campaign_id, cli_env, tmp_path)

    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == status, output
    (line,) = result.stderr.splitlines()
    assert line.startswith("campaign-pipeline: "), line
    assert expected.replace("{id}", campaign_id) in line, line


def test_process_command_refuses_a_campaign_without_recipients_in_one_line(
    cli_env: dict[str, str], sqlite_store: CampaignStore, tmp_path: Path
) -> None:
    """A campaign with no recipients fails its run with that reason, no traceback."""
    campaign_id = sqlite_store.campaigns.add(
        organization_id=ORGANIZATION_ID, status="asset_generated", **CAMPAIGNS["text"]
    )
    result = run_process(campaign_id, cli_env, tmp_path)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert f"campaign {campaign_id} cannot be sent: campaign has no recipients" in line
