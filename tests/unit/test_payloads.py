"""Pure-function tests of payload building: the spec's message formats, personalisation, validation.

Covers `build_payloads`, `parse_template_parameters`, `check_campaign_message` and
`recipients_frame` in `campaign_pipeline.payloads`. Every valid payload a test builds is also
checked against `campaign_pipeline/schemas/payload.schema.json`. No AWS, no database.
"""

import json
from typing import Any

import polars as pl
import pytest

from campaign_pipeline.errors import CampaignDefinitionError
from campaign_pipeline.payloads import (
    CampaignMessage,
    build_payloads,
    check_campaign_message,
    parse_template_parameters,
    recipients_frame,
)
from tests.support.payload_schema import assert_valid_payloads, payload_validator

# The ids and phone number of the spec's examples (docs: AWS SQS Integration, Message Formats).
ORGANIZATION_ID = "123e4567-e89b-12d3-a456-426614174000"
CAMPAIGN_ID = "123e4567-e89b-12d3-a456-426614174001"
AUDIENCE_ID = "123e4567-e89b-12d3-a456-426614174002"
PHONE = "+1234567890"
# SQS's default MaximumMessageSize.
MAX_BYTES = 262_144
IMAGE_URL = "https://your-bucket.s3.amazonaws.com/images/personalized-offer.jpg"

SPEC_TEMPLATE = """{
  "organizationId": "123e4567-e89b-12d3-a456-426614174000",
  "campaignId": "123e4567-e89b-12d3-a456-426614174001",
  "campaignAudienceId": "123e4567-e89b-12d3-a456-426614174002",
  "to": "+1234567890",
  "templateName": "hello_world",
  "templateLanguage": "en",
  "templateParameters": []
}"""

SPEC_TEMPLATE_WITH_PARAMETERS = """{
  "organizationId": "123e4567-e89b-12d3-a456-426614174000",
  "campaignId": "123e4567-e89b-12d3-a456-426614174001",
  "campaignAudienceId": "123e4567-e89b-12d3-a456-426614174002",
  "to": "+1234567890",
  "templateName": "welcome_message",
  "templateLanguage": "en",
  "templateParameters": [
    {
      "type": "header",
      "valueType": "text",
      "value": "Welcome!"
    },
    {
      "type": "body",
      "valueType": "text",
      "value": "John Doe"
    }
  ]
}"""

SPEC_TEXT = """{
  "organizationId": "123e4567-e89b-12d3-a456-426614174000",
  "campaignId": "123e4567-e89b-12d3-a456-426614174001",
  "campaignAudienceId": "123e4567-e89b-12d3-a456-426614174002",
  "to": "+1234567890",
  "messageType": "text",
  "messageContent": "Hello! This is a simple text message."
}"""

SPEC_IMAGE = """{
  "organizationId": "123e4567-e89b-12d3-a456-426614174000",
  "campaignId": "123e4567-e89b-12d3-a456-426614174001",
  "campaignAudienceId": "123e4567-e89b-12d3-a456-426614174002",
  "to": "+1234567890",
  "messageType": "image",
  "mediaUrl": "https://your-bucket.s3.amazonaws.com/images/personalized-offer.jpg",
  "caption": "Special offer just for you!"
}"""


def spec_media_without_caption(message_type: str, media_url: str) -> str:
    """The spec's media example for another type, with the always-present empty caption."""
    return json.dumps(
        {
            "organizationId": ORGANIZATION_ID,
            "campaignId": CAMPAIGN_ID,
            "campaignAudienceId": AUDIENCE_ID,
            "to": PHONE,
            "messageType": message_type,
            "mediaUrl": media_url,
            "caption": "",
        }
    )


def ordered(text: str) -> Any:
    """Parse JSON keeping every object as its list of (key, value) pairs, so order counts."""
    return json.loads(text, object_pairs_hook=list)


def campaign(message_type: str, **fields: Any) -> CampaignMessage:
    """A campaign message with the spec's ids."""
    return CampaignMessage(
        campaign_id=CAMPAIGN_ID,
        organization_id=ORGANIZATION_ID,
        message_type=message_type,
        **fields,
    )


def template(*parameters: dict[str, Any], **fields: Any) -> CampaignMessage:
    """A template campaign whose parameters go through `parse_template_parameters`."""
    fields.setdefault("template_name", "welcome_message")
    fields.setdefault("template_language", "en")
    return campaign(
        "template", template_parameters=parse_template_parameters(list(parameters)), **fields
    )


def body(value: Any) -> dict[str, Any]:
    """A body text template parameter."""
    return {"type": "body", "valueType": "text", "value": value}


def recipient(
    id: str | None = AUDIENCE_ID,
    phone_number: str | None = PHONE,
    name: str | None = "John Doe",
    attributes: str | dict[str, Any] | None = None,
) -> tuple[str | None, str | None, str | None, str | None]:
    """A recipient row; `attributes` given as a dict is serialised to JSON."""
    if isinstance(attributes, dict):
        attributes = json.dumps(attributes)
    return (id, phone_number, name, attributes)


def build(
    message: CampaignMessage, *rows: tuple[Any, ...], max_message_bytes: int = MAX_BYTES
) -> pl.DataFrame:
    """Build the payloads of `rows`, checking every valid one against the JSON Schema."""
    frame = build_payloads(message, recipients_frame(list(rows)), max_message_bytes)
    assert frame.columns == ["id", "payload", "failure_reason"]
    assert frame["id"].to_list() == [row[0] for row in rows]
    assert_valid_payloads(frame)
    return frame


def payload_of(message: CampaignMessage, **fields: Any) -> dict[str, Any]:
    """The payload of one recipient, which must be valid."""
    frame = build(message, recipient(**fields))
    assert frame["failure_reason"][0] is None
    return json.loads(frame["payload"][0])


def reason_of(message: CampaignMessage, **fields: Any) -> str:
    """The failure reason of one recipient, which must be invalid."""
    frame = build(message, recipient(**fields))
    assert frame["payload"][0] is None
    return frame["failure_reason"][0]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(template(template_name="hello_world"), SPEC_TEMPLATE, id="template"),
        pytest.param(
            template(
                {"type": "header", "valueType": "text", "value": "Welcome!"},
                body("{{name}}"),
            ),
            SPEC_TEMPLATE_WITH_PARAMETERS,
            id="template-with-parameters",
        ),
        pytest.param(
            campaign("text", message_content="Hello! This is a simple text message."),
            SPEC_TEXT,
            id="text",
        ),
        pytest.param(
            campaign("image", media_url=IMAGE_URL, caption="Special offer just for you!"),
            SPEC_IMAGE,
            id="image",
        ),
        pytest.param(
            campaign("video", media_url="https://cdn.example.com/v/launch.mp4", caption=""),
            spec_media_without_caption("video", "https://cdn.example.com/v/launch.mp4"),
            id="video",
        ),
        pytest.param(
            campaign("document", media_url="http://cdn.example.com/terms.pdf?v=2"),
            spec_media_without_caption("document", "http://cdn.example.com/terms.pdf?v=2"),
            id="document",
        ),
        pytest.param(
            campaign("audio", media_url="https://cdn.example.com:8443/a/jingle.ogg", caption=""),
            spec_media_without_caption("audio", "https://cdn.example.com:8443/a/jingle.ogg"),
            id="audio",
        ),
    ],
)
def test_payload_matches_spec_example(message: CampaignMessage, expected: str) -> None:
    """Each message type produces the spec's JSON, with the spec's key order."""
    frame = build(message, recipient(name="John Doe"))
    assert frame["failure_reason"][0] is None
    payload = frame["payload"][0]
    assert json.loads(payload) == json.loads(expected)
    assert ordered(payload) == ordered(expected)


def test_template_parameter_values_are_personalised() -> None:
    """`{{name}}`, `{{phone_number}}` and `{{ key }}` fill template parameter values."""
    message = template(
        {"type": "header", "valueType": "text", "value": "Hi {{name}}!"},
        body("Your number {{phone_number}}, your city {{ city }}, {{count}} points"),
        {"type": "button", "valueType": "payload", "value": "offer-{{code}}"},
    )
    payload = payload_of(
        message, name="Ana", attributes={"city": "Lisboa", "count": 42, "code": "A7"}
    )
    assert [parameter["value"] for parameter in payload["templateParameters"]] == [
        "Hi Ana!",
        "Your number +1234567890, your city Lisboa, 42 points",
        "offer-A7",
    ]


def test_text_content_is_personalised() -> None:
    """Placeholders in a text message's content are filled per recipient."""
    message = campaign("text", message_content="{{name}}: {{ discount }}% off in {{city}}")
    frame = build(
        message,
        recipient(id="a", name="Ana", attributes={"discount": 15, "city": "Porto"}),
        recipient(id="b", name="Ben", attributes={"discount": 12.5, "city": "Faro"}),
    )
    assert [json.loads(payload)["messageContent"] for payload in frame["payload"]] == [
        "Ana: 15% off in Porto",
        "Ben: 12.5% off in Faro",
    ]


def test_media_url_and_caption_are_personalised() -> None:
    """Placeholders in a media message's URL and caption are filled per recipient."""
    message = campaign(
        "image",
        media_url="https://cdn.example.com/offers/{{ offer_id }}.jpg?to={{phone_number}}",
        caption="{{name}}, {{offer}} is yours",
    )
    payload = payload_of(message, name="Ana", attributes={"offer_id": 981, "offer": "Free tea"})
    assert payload["mediaUrl"] == "https://cdn.example.com/offers/981.jpg?to=+1234567890"
    assert payload["caption"] == "Ana, Free tea is yours"


@pytest.mark.parametrize(
    ("placeholder", "attributes", "expected"),
    [
        ("{{city}}", {"city": "Lisboa"}, "Lisboa"),
        ("{{ city }}", {"city": "Lisboa"}, "Lisboa"),
        ("{{  city}}", {"city": "Lisboa"}, "Lisboa"),
        ("{{count}}", {"count": 42}, "42"),
        ("{{count}}", {"count": 0}, "0"),
        ("{{price}}", {"price": 19.99}, "19.99"),
        ("{{delta}}", {"delta": -7}, "-7"),
        ("{{big}}", {"big": 12345678901234567890}, "12345678901234567890"),
    ],
)
def test_attribute_value_fills_placeholder(
    placeholder: str, attributes: dict[str, Any], expected: str
) -> None:
    """Attribute strings and numbers fill `{{ key }}`, with or without inner spaces."""
    message = campaign("text", message_content=f"<{placeholder}>")
    assert payload_of(message, attributes=attributes)["messageContent"] == f"<{expected}>"


def test_name_and_phone_number_come_from_recipient_not_attributes() -> None:
    """`{{name}}` and `{{phone_number}}` use the recipient's columns, even if attributes differ."""
    message = campaign("text", message_content="{{name}} {{phone_number}}")
    payload = payload_of(
        message, name="Ana", attributes={"name": "Other", "phone_number": "+19999999999"}
    )
    assert payload["messageContent"] == "Ana +1234567890"


MISSING_CITY_MESSAGES = [
    pytest.param(template(body("Hello from {{city}}")), id="template-parameter"),
    pytest.param(campaign("text", message_content="Hello from {{ city }}"), id="text"),
    pytest.param(campaign("image", media_url="https://cdn.example.com/{{city}}.jpg"), id="url"),
    pytest.param(
        campaign("video", media_url=IMAGE_URL, caption="Hello from {{city}}"), id="caption"
    ),
]


@pytest.mark.parametrize("message", MISSING_CITY_MESSAGES)
@pytest.mark.parametrize(
    "attributes",
    [
        pytest.param(None, id="no-attributes"),
        pytest.param({}, id="no-key"),
        pytest.param({"city": ""}, id="empty-string"),
        pytest.param({"city": None}, id="null"),
        pytest.param({"town": "Lisboa"}, id="other-key"),
    ],
)
def test_missing_placeholder_value_fails_only_that_recipient(
    message: CampaignMessage, attributes: dict[str, Any] | None
) -> None:
    """A placeholder without a value fails that recipient alone; no literal `{{` is sent."""
    frame = build(
        message,
        recipient(id="before", attributes={"city": "Lisboa"}),
        recipient(id="missing", attributes=attributes),
        recipient(id="after", attributes={"city": "Porto"}),
    )
    assert frame["failure_reason"].to_list() == [None, "no value for placeholder {{city}}", None]
    assert frame["payload"][1] is None
    assert all("{{" not in payload for payload in frame["payload"].drop_nulls())


@pytest.mark.parametrize("name", [None, ""])
def test_missing_name_fails_recipient_only_when_used(name: str | None) -> None:
    """A recipient without a name fails `{{name}}` but not a message that does not use it."""
    with_name = campaign("text", message_content="Hi {{ name }}")
    assert reason_of(with_name, name=name) == "no value for placeholder {{name}}"
    without_name = campaign("text", message_content="Hi there")
    assert payload_of(without_name, name=name)["messageContent"] == "Hi there"


def test_first_missing_placeholder_is_named() -> None:
    """When several placeholders lack values, the reason names the first one in the text."""
    message = campaign("text", message_content="{{name}} {{city}} {{country}}")
    assert reason_of(message, attributes={"country": "PT"}) == "no value for placeholder {{city}}"


@pytest.mark.parametrize(
    ("phone_number", "reason"),
    [
        (None, "phone number is missing"),
        ("", "phone number is missing"),
        ("1234567890", "phone number must start with '+' (E.164)"),
        ("001234567890", "phone number must start with '+' (E.164)"),
        (" +1234567890", "phone number must start with '+' (E.164)"),
        ("+١٢٣٤٥٦٧٨٩", "phone number may contain only the digits 0-9 after '+'"),
        (
            "+\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19",
            "phone number may contain only the digits 0-9 after '+'",
        ),
        ("+1 234 567 890", "phone number may contain only the digits 0-9 after '+'"),
        ("+1-234-567-890", "phone number may contain only the digits 0-9 after '+'"),
        ("+1234567890\n", "phone number may contain only the digits 0-9 after '+'"),
        ("++1234567890", "phone number may contain only the digits 0-9 after '+'"),
        ("+", "phone number may contain only the digits 0-9 after '+'"),
        ("+1234567", "phone number must have 8 to 15 digits"),
        ("+1234567890123456", "phone number must have 8 to 15 digits"),
        ("+0234567890", "phone number must not start with 0 after '+'"),
    ],
)
def test_invalid_phone_number_fails_recipient(phone_number: str | None, reason: str) -> None:
    """Each way a phone number breaks E.164 has its own reason."""
    message = campaign("text", message_content="Hello")
    assert reason_of(message, phone_number=phone_number) == reason


@pytest.mark.parametrize("phone_number", ["+12345678", "+123456789012345", "+447911123456"])
def test_phone_number_length_bounds_are_inclusive(phone_number: str) -> None:
    """E.164 numbers of 8 and 15 digits are accepted and sent as they are."""
    message = campaign("text", message_content="Hello")
    assert payload_of(message, phone_number=phone_number)["to"] == phone_number


@pytest.mark.parametrize("audience_id", ["", "has space", "x" * 81, "ïd", "a.b", "a/b", "id\n"])
def test_invalid_audience_id_fails_recipient(audience_id: str) -> None:
    """An audience id that cannot be a SendMessageBatch entry id fails the recipient."""
    message = campaign("text", message_content="Hello")
    assert reason_of(message, id=audience_id) == "audience id is not a valid SQS batch entry id"


@pytest.mark.parametrize("audience_id", ["x" * 80, "A-b_9", "42"])
def test_valid_audience_id_is_sent_as_is(audience_id: str) -> None:
    """Audience ids of up to 80 alphanumerics, hyphens and underscores are accepted."""
    message = campaign("text", message_content="Hello")
    assert payload_of(message, id=audience_id)["campaignAudienceId"] == audience_id


def test_null_audience_id_fails_recipient() -> None:
    """A recipient without an id fails instead of getting `"campaignAudienceId": null`."""
    frame = build_payloads(
        campaign("text", message_content="Hello"), recipients_frame([recipient(id=None)]), MAX_BYTES
    )
    assert frame.row(0) == (None, None, "audience id is not a valid SQS batch entry id")


@pytest.mark.parametrize(
    "attributes",
    ["[1, 2]", '"text"', "42", "null", "true", "", "   ", "not json", "{broken", '{"a": 1} extra'],
)
def test_attributes_that_are_not_a_json_object_fail_recipient(attributes: str) -> None:
    """Attributes must be a JSON object, even when no placeholder reads them."""
    message = campaign("text", message_content="Hello")
    assert reason_of(message, attributes=attributes) == "attributes must be a JSON object"


@pytest.mark.parametrize("attributes", [None, "{}", "  {}  ", '{"nested": {"a": [1, 2]}}'])
def test_absent_or_object_attributes_are_accepted(attributes: str | None) -> None:
    """No attributes, or any JSON object, is fine for a message without placeholders."""
    message = campaign("text", message_content="Hello")
    assert payload_of(message, attributes=attributes)["messageContent"] == "Hello"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"template_name": None}, "template name is missing"),
        ({"template_name": ""}, "template name is missing"),
        ({"template_language": None}, "template language is missing"),
        ({"template_language": ""}, "template language is missing"),
        ({"template_name": "", "template_language": ""}, "template name is missing"),
    ],
)
def test_template_without_name_or_language_fails_recipient(
    fields: dict[str, Any], reason: str
) -> None:
    """A template message needs a template name and language."""
    assert reason_of(template(**fields)) == reason


@pytest.mark.parametrize(
    ("content", "attributes", "reason"),
    [
        (None, None, "text message content is empty"),
        ("", None, "text message content is empty"),
        (" \n\t ", None, "text message content is empty"),
        ("{{blank}}", {"blank": "   "}, "text message content is empty"),
        ("x" * 4097, None, "text message is longer than 4096 characters"),
        ("{{long}}", {"long": "y" * 4097}, "text message is longer than 4096 characters"),
    ],
)
def test_invalid_text_fails_recipient(
    content: str | None, attributes: dict[str, Any] | None, reason: str
) -> None:
    """Text content must be non-blank and at most 4096 characters once personalised."""
    message = campaign("text", message_content=content)
    assert reason_of(message, attributes=attributes) == reason


@pytest.mark.parametrize("content", ["x" * 4096, "😀" * 4096, "é" * 4096])
def test_text_of_4096_characters_is_accepted(content: str) -> None:
    """The text limit counts characters, not bytes."""
    message = campaign("text", message_content=content)
    assert payload_of(message)["messageContent"] == content


@pytest.mark.parametrize(
    ("media_url", "attributes", "reason"),
    [
        (None, None, "media URL is missing"),
        ("ftp://files.example.com/a.jpg", None, "media URL must be an http(s) URL"),
        ("javascript:alert(1)", None, "media URL must be an http(s) URL"),
        ("/images/a.jpg", None, "media URL must be an http(s) URL"),
        ("images/a.jpg", None, "media URL must be an http(s) URL"),
        ("//cdn.example.com/a.jpg", None, "media URL must be an http(s) URL"),
        ("https://", None, "media URL must be an http(s) URL"),
        ("https://cdn.example.com/a b.jpg", None, "media URL must be an http(s) URL"),
        ("data:image/png;base64,AAAA", None, "media URL must be an http(s) URL"),
        ("{{url}}", {"url": "ftp://files.example.com/a.jpg"}, "media URL must be an http(s) URL"),
        ("{{url}}", {"url": "javascript:alert(1)"}, "media URL must be an http(s) URL"),
        ("{{url}}", {}, "no value for placeholder {{url}}"),
    ],
)
def test_invalid_media_url_fails_recipient(
    media_url: str | None, attributes: dict[str, Any] | None, reason: str
) -> None:
    """A media message needs an http(s) URL once personalised."""
    message = campaign("image", media_url=media_url, caption="Look")
    assert reason_of(message, attributes=attributes) == reason


@pytest.mark.parametrize("message_type", ["image", "video", "document"])
def test_caption_longer_than_1024_characters_fails_recipient(message_type: str) -> None:
    """A caption may have at most 1024 characters once personalised."""
    message = campaign(message_type, media_url=IMAGE_URL, caption="{{name}}" + "c" * 1020)
    assert len(payload_of(message, name="Anna")["caption"]) == 1024
    assert reason_of(message, name="Annie") == "caption is longer than 1024 characters"


@pytest.mark.parametrize(
    ("caption", "attributes"),
    [("Listen to this", None), ("{{note}}", {"note": "Listen"})],
)
def test_audio_with_caption_fails_recipient(
    caption: str, attributes: dict[str, Any] | None
) -> None:
    """Audio messages take no caption; a non-empty one fails the recipient."""
    message = campaign("audio", media_url=IMAGE_URL, caption=caption)
    assert reason_of(message, attributes=attributes) == "audio messages take no caption"


@pytest.mark.parametrize("caption", [None, ""])
def test_media_without_caption_sends_empty_caption(caption: str | None) -> None:
    """A media message without a caption still has `"caption": ""`."""
    message = campaign("image", media_url=IMAGE_URL, caption=caption)
    assert payload_of(message)["caption"] == ""


def test_payload_over_max_message_bytes_fails_recipient() -> None:
    """A payload larger than the queue's maximum size fails with its size in bytes."""
    message = campaign("text", message_content="{{name}}")
    size = len(build(message, recipient(name="é" * 50))["payload"][0].encode())
    at_limit = build(message, recipient(name="é" * 50), max_message_bytes=size)
    assert at_limit["failure_reason"][0] is None
    over = build(message, recipient(name="é" * 50), max_message_bytes=size - 1)
    assert over.row(0) == (
        AUDIENCE_ID,
        None,
        f"payload is {size} bytes, over the queue's maximum message size of {size - 1} bytes",
    )


def test_first_problem_found_is_the_reason() -> None:
    """A recipient with several problems gets the reason of the first check: id, phone, ..."""
    message = campaign("text", message_content="{{city}}")
    frame = build(
        message,
        recipient(id="bad id", phone_number="123", attributes="[]"),
        recipient(id="b", phone_number="123", attributes="[]"),
        recipient(id="c", attributes="[]"),
        recipient(id="d", attributes={}),
    )
    assert frame["failure_reason"].to_list() == [
        "audience id is not a valid SQS batch entry id",
        "phone number must start with '+' (E.164)",
        "attributes must be a JSON object",
        "no value for placeholder {{city}}",
    ]


AWKWARD_TEXTS = [
    pytest.param('She said "hi"', id="quotes"),
    pytest.param("C:\\path\\to\\file \\n \\u0041", id="backslashes"),
    pytest.param("line one\nline two\r\n\ttabbed", id="newlines"),
    pytest.param("nul\x00byte \x01\x1f\x7f", id="control-characters"),
    pytest.param("party 🎉👩🏽‍💻 🇵🇹", id="emoji"),
    pytest.param("مرحبا بك \u200f שלום", id="rtl"),
    pytest.param("sep\u2028arators\u2029", id="line-separators"),
    pytest.param("{{phone_number}} and {{name}} and {{ city }}", id="placeholders"),
    pytest.param("Robert'); DROP TABLE campaign_audience;--", id="sql"),
    pytest.param("</script><script>alert(1)</script>", id="html"),
]


@pytest.mark.parametrize("text", AWKWARD_TEXTS)
def test_awkward_name_round_trips_exactly(text: str) -> None:
    """A recipient name is escaped, not re-expanded, in every personalised field."""
    message = campaign("image", media_url=IMAGE_URL, caption="{{name}}")
    assert payload_of(message, name=text)["caption"] == text
    message = campaign("text", message_content="Hi {{name}}!")
    assert payload_of(message, name=text)["messageContent"] == f"Hi {text}!"
    message = template(body("{{name}}"))
    assert payload_of(message, name=text)["templateParameters"][0]["value"] == text


@pytest.mark.parametrize("text", AWKWARD_TEXTS)
def test_awkward_attribute_round_trips_exactly(text: str) -> None:
    """An attribute value is unescaped from its JSON and re-escaped exactly once."""
    message = campaign("text", message_content="[{{ note }}]")
    payload = payload_of(message, attributes={"note": text, "city": "Lisboa"})
    assert payload["messageContent"] == f"[{text}]"


@pytest.mark.parametrize("text", AWKWARD_TEXTS)
def test_awkward_campaign_text_round_trips_exactly(text: str) -> None:
    """Campaign-level strings outside placeholders are escaped exactly once."""
    parameter = {"type": "body", "valueType": text, "value": text}
    message = CampaignMessage(
        campaign_id=text,
        organization_id=text,
        message_type="template",
        template_name=text,
        template_language=text,
        template_parameters=parse_template_parameters([parameter]),
    )
    payload = payload_of(message, attributes={"city": "Lisboa"})
    assert payload["campaignId"] == payload["organizationId"] == text
    assert payload["templateName"] == payload["templateLanguage"] == text
    assert payload["templateParameters"][0]["valueType"] == text


def test_valid_recipients_in_a_chunk_with_invalid_ones_get_payloads() -> None:
    """Invalid recipients fail on their own; the others in the chunk are built in order."""
    message = campaign("text", message_content="Hi {{name}} from {{city}}")
    frame = build(
        message,
        recipient(id="ok-1", name="Ana", attributes={"city": "Lisboa"}),
        recipient(id="no-plus", phone_number="351912345678", attributes={"city": "Porto"}),
        recipient(id="ok-2", phone_number="+351912345678", name="Ben", attributes={"city": "Faro"}),
        recipient(id="no-city", attributes={}),
        recipient(id="bad-attributes", attributes="[]"),
        recipient(
            id="ok-3", phone_number="+5511987654321", name="Caio", attributes={"city": "Rio"}
        ),
    )
    valid = frame.filter(pl.col("failure_reason").is_null())
    assert valid["id"].to_list() == ["ok-1", "ok-2", "ok-3"]
    assert [
        (p["campaignAudienceId"], p["to"], p["messageContent"])
        for p in assert_valid_payloads(valid)
    ] == [
        ("ok-1", PHONE, "Hi Ana from Lisboa"),
        ("ok-2", "+351912345678", "Hi Ben from Faro"),
        ("ok-3", "+5511987654321", "Hi Caio from Rio"),
    ]
    assert frame.filter(pl.col("failure_reason").is_not_null())["payload"].null_count() == 3


@pytest.mark.parametrize(
    "value",
    [7, 2.5, True, ["a", "b"], {"text": "{{name}}", "nested": {"n": 1}}, ""],
)
def test_non_string_template_parameter_value_is_emitted_as_is(value: Any) -> None:
    """A parameter value that is not a string (or has no placeholder) is sent unchanged."""
    message = template({"type": "button", "valueType": "payload", "value": value}, body("{{name}}"))
    payload = payload_of(message, name="Ana")
    assert payload["templateParameters"] == [
        {"type": "button", "valueType": "payload", "value": value},
        {"type": "body", "valueType": "text", "value": "Ana"},
    ]


def test_template_parameter_keys_keep_their_stored_order() -> None:
    """A parameter's keys, extra ones included, appear in the order they were stored."""
    stored = '[{"value": "{{name}}", "valueType": "text", "type": "body", "index": 0}]'
    message = campaign(
        "template",
        template_name="welcome_message",
        template_language="en",
        template_parameters=parse_template_parameters(stored),
    )
    frame = build(message, recipient(name="Ana"))
    assert ordered(frame["payload"][0])[-1] == (
        "templateParameters",
        [[("value", "Ana"), ("valueType", "text"), ("type", "body"), ("index", 0)]],
    )


@pytest.mark.parametrize("message_type", ["sticker", "", "Text", "template "])
def test_unknown_message_type_raises(message_type: str) -> None:
    """A campaign with an unknown message type cannot be turned into messages at all."""
    message = campaign(message_type, message_content="Hello")
    expected = (
        f"unknown message type {message_type!r}; "
        "expected one of template, text, image, video, document, audio"
    )
    with pytest.raises(CampaignDefinitionError) as raised:
        check_campaign_message(message)
    assert str(raised.value) == expected
    with pytest.raises(CampaignDefinitionError, match="unknown message type"):
        build_payloads(message, recipients_frame([recipient()]), MAX_BYTES)


@pytest.mark.parametrize(
    "message_type", ["template", "text", "image", "video", "document", "audio"]
)
def test_known_message_types_pass_the_check(message_type: str) -> None:
    """Every message type of the spec passes `check_campaign_message`."""
    check_campaign_message(campaign(message_type))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{", "template parameters are not valid JSON: "),
        ("[{'type': 'body'}]", "template parameters are not valid JSON: "),
        ("{}", "template parameters must be a JSON list"),
        ('"body"', "template parameters must be a JSON list"),
        (5, "template parameters must be a JSON list"),
        ({"type": "body"}, "template parameters must be a JSON list"),
        ("[1]", "template parameter 1 is not a JSON object"),
        ([body("x"), "body"], "template parameter 2 is not a JSON object"),
        (
            '[{"type": "footer", "valueType": "text", "value": "x"}]',
            "template parameter 1 has type 'footer'; expected one of header, body, button",
        ),
        (
            [{"valueType": "text", "value": "x"}],
            "template parameter 1 has type None; expected one of header, body, button",
        ),
        ('[{"type": "body", "value": "x"}]', "template parameter 1 has no valueType"),
        (
            [{"type": "body", "valueType": "", "value": "x"}],
            "template parameter 1 has no valueType",
        ),
        ([{"type": "body", "valueType": 1, "value": "x"}], "template parameter 1 has no valueType"),
        ([body("x"), {"type": "header", "valueType": "text"}], "template parameter 2 has no value"),
        (
            '[{"type": "body", "valueType": "text", "value": null}]',
            "template parameter 1 has no value",
        ),
    ],
)
def test_malformed_template_parameters_raise(raw: Any, message: str) -> None:
    """Stored template parameters that are not a list of complete objects are rejected."""
    with pytest.raises(CampaignDefinitionError) as raised:
        parse_template_parameters(raw)
    assert str(raised.value).startswith(message)
    # Invalid JSON is explained by the decoder after the prefix; every other message is exact.
    if not message.endswith(": "):
        assert str(raised.value) == message


@pytest.mark.parametrize("raw", [None, "", "[]", []])
def test_absent_template_parameters_parse_to_nothing(raw: Any) -> None:
    """No stored parameters, or an empty list, means a template without parameters."""
    assert parse_template_parameters(raw) == ()


def test_template_parameters_parse_from_json_text_or_list() -> None:
    """Parameters stored as JSON text or as an already-decoded list give the same objects."""
    parameters = [
        {"type": "header", "valueType": "text", "value": "Welcome!"},
        {"type": "button", "valueType": "payload", "value": {"id": 3}},
    ]
    assert parse_template_parameters(json.dumps(parameters)) == tuple(parameters)
    assert parse_template_parameters(parameters) == tuple(parameters)


def test_recipients_frame_has_the_recipient_columns() -> None:
    """Rows become a frame of string columns `id`, `phone_number`, `name`, `attributes`."""
    frame = recipients_frame(
        [(AUDIENCE_ID, PHONE, "John Doe", '{"city": "Lisboa"}'), ("b", None, None, None)]
    )
    assert frame.schema == pl.Schema(
        {"id": pl.String, "phone_number": pl.String, "name": pl.String, "attributes": pl.String}
    )
    assert frame.rows() == [
        (AUDIENCE_ID, PHONE, "John Doe", '{"city": "Lisboa"}'),
        ("b", None, None, None),
    ]


def test_empty_chunk_builds_no_payloads() -> None:
    """An empty chunk gives an empty result with the result's columns."""
    frame = build_payloads(
        campaign("text", message_content="Hello"), recipients_frame([]), MAX_BYTES
    )
    assert frame.schema == pl.Schema(
        {"id": pl.String, "payload": pl.String, "failure_reason": pl.String}
    )
    assert frame.height == 0


def test_payload_schema_rejects_off_spec_payloads() -> None:
    """The JSON Schema the tests rely on tells spec payloads from broken ones."""
    validator = payload_validator()
    for example in (SPEC_TEMPLATE, SPEC_TEMPLATE_WITH_PARAMETERS, SPEC_TEXT, SPEC_IMAGE):
        validator.validate(json.loads(example))
    image = json.loads(SPEC_IMAGE)
    text = json.loads(SPEC_TEXT)
    broken = [
        {key: value for key, value in image.items() if key != "caption"},
        {**image, "mediaUrl": "ftp://example.com/a.jpg"},
        {**image, "messageType": "sticker"},
        {**text, "to": "1234567890"},
        {**text, "to": "+١٢٣٤٥٦٧٨٩"},
        {**text, "extra": 1},
        {**text, "messageType": "image"},
        {**text, "campaignAudienceId": None},
        {
            **json.loads(SPEC_TEMPLATE),
            "templateParameters": [{"type": "footer", "valueType": "text", "value": "x"}],
        },
        {**json.loads(SPEC_TEMPLATE), "messageType": "template"},
    ]
    for payload in broken:
        assert not validator.is_valid(payload), payload


def test_empty_media_url_is_reported_missing() -> None:
    """An empty media URL on the campaign is 'missing', not a malformed URL."""
    message = CampaignMessage(CAMPAIGN_ID, ORGANIZATION_ID, "image", media_url="")
    built = build_payloads(
        message, recipients_frame([(AUDIENCE_ID, "+1234567890", "J", None)]), 262_144
    )
    assert built["failure_reason"].to_list() == ["media URL is missing"]


@pytest.mark.parametrize("text", ["Hi {{first-name}}", "Hi {{ }}", "Hi {{name.first}}"])
def test_malformed_placeholders_reject_the_campaign(text: str) -> None:
    """A `{{...}}` that is not a valid placeholder is never sent literally: campaign refused."""
    message = CampaignMessage(CAMPAIGN_ID, ORGANIZATION_ID, "text", message_content=text)
    with pytest.raises(CampaignDefinitionError, match="malformed placeholder"):
        check_campaign_message(message)
