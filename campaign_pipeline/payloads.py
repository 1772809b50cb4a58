"""Build and validate the WhatsApp message payloads of a campaign's audience, a chunk at a time.

Everything per recipient is a Polars expression evaluated column-wise in Rust; Python only touches
the campaign (once per chunk), never each recipient. The JSON is assembled from fragments: what is
the same for the whole campaign is serialised once with `json.dumps`, and only the per-recipient
values are escaped, column-wise, by Polars' JSON encoder. Field names and order follow the spec.
"""

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from campaign_pipeline.categories import DEFAULT_CATEGORY
from campaign_pipeline.errors import CampaignDefinitionError
from campaign_pipeline.phone_numbers import phone_number_reason

MEDIA_TYPES = ("image", "video", "document", "audio")
MESSAGE_TYPES = ("template", "text", *MEDIA_TYPES)
TEMPLATE_PARAMETER_TYPES = ("header", "body", "button")

# WhatsApp's own limits: a text body of 4096 characters, a media caption of 1024.
TEXT_MAX_CHARS = 4096
CAPTION_MAX_CHARS = 1024

# SendMessageBatch entry ids: alphanumerics, hyphens and underscores, at most 80 characters.
BATCH_ENTRY_ID_PATTERN = r"^[A-Za-z0-9_-]{1,80}$"
# No whitespace or control characters after the host: they are not URL characters, and the
# JSON Schema's `\S` (Python's) counts U+001C to U+001F as whitespace where Rust's does not.
HTTP_URL_PATTERN = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?([/?#][^\s\p{Cc}]*)?$"
# SQS takes only #x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF in a body.
# JSON escapes the control characters; these two noncharacters it leaves as they are.
SQS_FORBIDDEN_NONCHARACTERS = ("\ufffe", "\uffff")

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
ANY_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
RECIPIENT_FIELDS = ("name", "phone_number")

RECIPIENT_SCHEMA: dict[str, Any] = {
    "id": pl.String,
    "phone_number": pl.String,
    "name": pl.String,
    "attributes": pl.String,
}
"""Columns of a recipient chunk; `attributes` is the JSON object as text."""


@dataclass(frozen=True)
class CampaignMessage:
    """The campaign-level part of every payload, as stored with the campaign.

    `category` is not in the payload: it says which suppressions and caps hold for it.
    """

    campaign_id: str
    organization_id: str
    message_type: str
    template_name: str | None = None
    template_language: str | None = None
    template_parameters: tuple[Mapping[str, Any], ...] = ()
    message_content: str | None = None
    media_url: str | None = None
    caption: str | None = None
    category: str = DEFAULT_CATEGORY


def parse_template_parameters(raw: Any) -> tuple[Mapping[str, Any], ...]:
    """Check the stored `template_parameters` (a JSON list, or its text) and return its objects."""
    if raw is None or raw == "":
        return ()
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as error:
            raise CampaignDefinitionError(
                f"template parameters are not valid JSON: {error}"
            ) from None
    if not isinstance(raw, list):
        raise CampaignDefinitionError("template parameters must be a JSON list")
    for position, parameter in enumerate(raw, start=1):
        if not isinstance(parameter, dict):
            raise CampaignDefinitionError(f"template parameter {position} is not a JSON object")
        if parameter.get("type") not in TEMPLATE_PARAMETER_TYPES:
            raise CampaignDefinitionError(
                f"template parameter {position} has type {parameter.get('type')!r}; "
                f"expected one of {', '.join(TEMPLATE_PARAMETER_TYPES)}"
            )
        if not isinstance(parameter.get("valueType"), str) or not parameter["valueType"]:
            raise CampaignDefinitionError(f"template parameter {position} has no valueType")
        if "value" not in parameter or parameter["value"] is None:
            raise CampaignDefinitionError(f"template parameter {position} has no value")
    return tuple(raw)


def check_campaign_message(message: CampaignMessage) -> None:
    """Raise `CampaignDefinitionError` for an unknown message type or a malformed placeholder."""
    if not message.organization_id:
        # Every payload carries it, and the schema requires a non-empty identifier.
        raise CampaignDefinitionError("organization id is missing")
    if message.message_type not in MESSAGE_TYPES:
        raise CampaignDefinitionError(
            f"unknown message type {message.message_type!r}; "
            f"expected one of {', '.join(MESSAGE_TYPES)}"
        )
    texts = [message.message_content, message.media_url, message.caption]
    texts += [p["value"] for p in message.template_parameters if isinstance(p["value"], str)]
    for text in filter(None, texts):
        for match in ANY_PLACEHOLDER.finditer(text):
            if not PLACEHOLDER.fullmatch(match.group()):
                raise CampaignDefinitionError(
                    f"malformed placeholder {match.group()!r}: placeholders are {{{{name}}}}, "
                    "{{phone_number}} or {{key}} of the attributes (letters, digits, underscores)"
                )


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _json_string(text: pl.Expr) -> pl.Expr:
    """JSON-encode a string column (quotes and escapes) with Polars' encoder, column-wise."""
    # `{"v":...}` minus its first five characters and its last one is the encoded value.
    return pl.struct(text.alias("v")).struct.json_encode().str.slice(5).str.head(-1)


@dataclass(frozen=True)
class _Filled:
    """A personalised string: its value per recipient and why it could not be filled."""

    value: pl.Expr
    failure_reason: pl.Expr


def _field_value(key: str) -> pl.Expr:
    """The recipient's value for `{{key}}`: a column, or a key of the attributes object."""
    if key in RECIPIENT_FIELDS:
        value = pl.col(key)
    else:
        value = pl.col("attributes").str.json_path_match(f"$.{key}")
    return pl.when(value == "").then(None).otherwise(value)


def _fill(template: str | None) -> _Filled:
    """Personalise `template` per recipient; a placeholder without a value fails the recipient."""
    if template is None:
        return _Filled(pl.lit(None, dtype=pl.String), pl.lit(None, dtype=pl.String))
    pieces: list[pl.Expr] = []
    reasons: list[pl.Expr] = []
    position = 0
    for match in PLACEHOLDER.finditer(template):
        key = match.group(1)
        value = _field_value(key)
        pieces += [pl.lit(template[position : match.start()]), value]
        reasons.append(
            pl.when(value.is_null()).then(pl.lit(f"no value for placeholder {{{{{key}}}}}"))
        )
        position = match.end()
    if not reasons:
        return _Filled(pl.lit(template), pl.lit(None, dtype=pl.String))
    pieces.append(pl.lit(template[position:]))
    return _Filled(pl.concat_str(pieces), pl.coalesce(reasons))


def _attributes_reason() -> pl.Expr:
    attributes = pl.col("attributes")
    is_object = (
        attributes.str.strip_chars().str.starts_with("{")
        & attributes.str.json_path_match("$").is_not_null()
    )
    return pl.when(attributes.is_not_null() & ~is_object).then(
        pl.lit("attributes must be a JSON object")
    )


def _template_body(message: CampaignMessage) -> tuple[list[pl.Expr], list[pl.Expr]]:
    """Fragments after `"to"` for a template message, and their failure reasons."""
    reasons: list[pl.Expr] = []
    if not message.template_name:
        reasons.append(pl.lit("template name is missing"))
    if not message.template_language:
        reasons.append(pl.lit("template language is missing"))
    pieces: list[pl.Expr] = [
        pl.lit(
            f',"templateName":{_json(message.template_name)}'
            f',"templateLanguage":{_json(message.template_language)}'
            ',"templateParameters":['
        )
    ]
    for position, parameter in enumerate(message.template_parameters):
        opening = "{" if position == 0 else ",{"
        fields = list(parameter.items())
        for index, (key, value) in enumerate(fields):
            prefix = (opening if index == 0 else ",") + f"{_json(key)}:"
            if key == "value" and isinstance(value, str):
                filled = _fill(value)
                pieces += [pl.lit(prefix), _json_string(filled.value)]
                reasons.append(filled.failure_reason)
            else:
                pieces.append(pl.lit(prefix + _json(value)))
        pieces.append(pl.lit("}"))
    pieces.append(pl.lit("]"))
    return pieces, reasons


def _text_body(message: CampaignMessage) -> tuple[list[pl.Expr], list[pl.Expr]]:
    content = _fill(message.message_content)
    reasons = [
        content.failure_reason,
        pl.when(content.value.is_null() | (content.value.str.strip_chars() == "")).then(
            pl.lit("text message content is empty")
        ),
        pl.when(content.value.str.len_chars() > TEXT_MAX_CHARS).then(
            pl.lit(f"text message is longer than {TEXT_MAX_CHARS} characters")
        ),
    ]
    pieces = [pl.lit(',"messageType":"text","messageContent":'), _json_string(content.value)]
    return pieces, reasons


def _media_body(message: CampaignMessage) -> tuple[list[pl.Expr], list[pl.Expr]]:
    url = _fill(message.media_url or None)
    caption = _fill(message.caption or "")
    reasons = [
        pl.lit("media URL is missing") if not message.media_url else url.failure_reason,
        pl.when(~url.value.str.contains(HTTP_URL_PATTERN)).then(
            pl.lit("media URL must be an http(s) URL")
        ),
        caption.failure_reason,
        pl.when(caption.value.str.len_chars() > CAPTION_MAX_CHARS).then(
            pl.lit(f"caption is longer than {CAPTION_MAX_CHARS} characters")
        ),
    ]
    if message.message_type == "audio":
        # WhatsApp sends audio without a caption; the spec's empty `caption` field stays.
        reasons.append(pl.when(caption.value != "").then(pl.lit("audio messages take no caption")))
    pieces = [
        pl.lit(f',"messageType":{_json(message.message_type)},"mediaUrl":'),
        _json_string(url.value),
        pl.lit(',"caption":'),
        _json_string(caption.value),
    ]
    return pieces, reasons


def build_payloads(
    message: CampaignMessage, recipients: pl.DataFrame, max_message_bytes: int
) -> pl.DataFrame:
    """Return `id`, `payload` (JSON text) and `failure_reason` for each recipient.

    A recipient is valid when `failure_reason` is null; otherwise `payload` is null and the reason
    names the first problem found. `max_message_bytes` is the queue's `MaximumMessageSize`.
    """
    check_campaign_message(message)
    if message.message_type == "template":
        body, body_reasons = _template_body(message)
    elif message.message_type == "text":
        body, body_reasons = _text_body(message)
    else:
        body, body_reasons = _media_body(message)
    head = (
        f'{{"organizationId":{_json(message.organization_id)}'
        f',"campaignId":{_json(message.campaign_id)}'
        ',"campaignAudienceId":'
    )
    payload = pl.concat_str(
        [
            pl.lit(head),
            _json_string(pl.col("id")),
            pl.lit(',"to":'),
            _json_string(pl.col("phone_number")),
            *body,
            pl.lit("}"),
        ]
    )
    # They only ever occur inside a JSON string, where their escapes mean the same characters.
    payload = payload.str.replace_many(
        list(SQS_FORBIDDEN_NONCHARACTERS),
        [f"\\u{ord(character):04x}" for character in SQS_FORBIDDEN_NONCHARACTERS],
    )
    reasons = [
        pl.when(pl.col("id").is_null() | ~pl.col("id").str.contains(BATCH_ENTRY_ID_PATTERN)).then(
            pl.lit("audience id is not a valid SQS batch entry id")
        ),
        phone_number_reason(pl.col("phone_number")),
        _attributes_reason(),
        *body_reasons,
    ]
    frame = recipients.lazy().select(
        pl.col("id"),
        payload.alias("payload"),
        pl.coalesce(reasons).alias("failure_reason"),
    )
    size = pl.col("payload").str.len_bytes()
    too_large = pl.format(
        "payload is {} bytes, over the queue's maximum message size of {} bytes",
        size,
        pl.lit(max_message_bytes),
    )
    reason = pl.coalesce(
        pl.col("failure_reason"), pl.when(size > max_message_bytes).then(too_large)
    )
    return frame.with_columns(
        pl.when(reason.is_null()).then(pl.col("payload")).alias("payload"),
        reason.alias("failure_reason"),
    ).collect()


def recipients_frame(rows: Sequence[Sequence[Any]]) -> pl.DataFrame:
    """A recipient chunk from `(id, phone_number, name, attributes_json)` rows."""
    return pl.DataFrame(rows, schema=RECIPIENT_SCHEMA, orient="row")
