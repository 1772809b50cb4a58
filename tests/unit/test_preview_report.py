"""The campaign preview's report without a server: the DataFrame of `campaign_pipeline.preview`
(string columns, masking, `limit`), the 1 MiB assumed without SQS settings, and the masked text.

On SQLite; the byte-for-byte comparison with a run, the CLI and the job are in
`tests/integration/test_preview.py`.
"""

import json
from collections import Counter
from typing import Any

import pandas as pd
import pytest

import campaign_pipeline
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.services.preview import (
    ASSUMED_MAX_MESSAGE_BYTES,
    ASSUMED_SOURCE,
    PreviewReport,
    format_preview,
    queue_limit_from_environment,
)

ORGANIZATION_ID = "123e4567-e89b-12d3-a456-426614174000"
VALID = [f"+1555{i:07d}" for i in range(6)]
BAD_PHONE = "5550000099"
# Valid, but over the smallest MaximumMessageSize SQS allows (its city is 1,200 characters).
BIG = "+15550000098"


def add_campaign(store: CampaignStore, status: str = "asset_generated", **fields: Any) -> str:
    """A template campaign with placeholders; six valid recipients and three invalid ones."""
    columns = {
        "message_type": "template",
        "template_name": "welcome",
        "template_language": "pt_BR",
        "template_parameters": [
            {"type": "header", "valueType": "text", "value": "Olá {{name}}!"},
            {"type": "body", "valueType": "text", "value": "{{city}}: call {{phone_number}}"},
        ],
    }
    campaign_id = store.campaigns.add(
        organization_id=ORGANIZATION_ID, name="Preview", status=status, **(columns | fields)
    )
    names = ['Zoë "Z" 🎉', "line\nbreak", "back\\slash", "tab\there", "\ufffe odd", "plain"]
    store.campaigns.add_recipients(
        campaign_id,
        [
            {"phone_number": phone, "name": name, "attributes": {"city": f"Città {i}"}}
            for i, (phone, name) in enumerate(zip(VALID, names, strict=True))
        ]
        + [
            {"phone_number": BAD_PHONE, "name": "bad", "attributes": {"city": "x"}},
            {"phone_number": "+15550000097", "name": "no city", "attributes": {}},
            {"phone_number": BIG, "name": "big", "attributes": {"city": "y" * 1200}},
        ],
    )
    return campaign_id


def every_phone() -> list[str]:
    return [*VALID, BAD_PHONE, "+15550000097", BIG]


def assert_no_phone_number(*texts: str) -> None:
    for text in texts:
        for phone in every_phone():
            assert phone not in text and phone.lstrip("+") not in text, text


def test_dataframe_has_string_columns_a_masked_to_and_a_limit(sqlite_store: CampaignStore) -> None:
    """Columns, dtype `string` with pd.NA, `to` as ***NN, rows by id up to `limit`."""
    campaign_id = add_campaign(sqlite_store)

    frame = campaign_pipeline.preview(campaign_id, database_url=sqlite_store.database_url)

    columns = ["campaign_audience_id", "to", "payload", "failure_reason", "failure_code"]
    assert list(frame.columns) == columns
    assert all(frame[column].dtype == pd.StringDtype() for column in columns)
    assert isinstance(frame.index, pd.RangeIndex)
    assert list(frame["campaign_audience_id"]) == sorted(frame["campaign_audience_id"])
    phones = {
        json.loads(p)["campaignAudienceId"]: json.loads(p)["to"] for p in frame["payload"].dropna()
    }
    for row in frame.itertuples():
        assert row.to.startswith("***") and len(row.to) == 5
        if row.campaign_audience_id in phones:
            assert row.to == "***" + phones[row.campaign_audience_id][-2:]
        assert pd.isna(row.payload) != pd.isna(row.failure_reason)
    invalid = frame[frame["failure_reason"].notna()]
    assert len(invalid) == 2 and all(value is pd.NA for value in invalid["payload"])
    assert list(invalid["failure_code"]) == ["invalid", "invalid"]
    assert frame["failure_code"].notna().sum() == 2
    assert set(frame["to"]) >= {"***99", "***97", "***98"}
    assert_no_phone_number(frame.drop(columns="payload").to_csv())
    # The payload is the message itself, its number unmasked, as `preview --json` shows it.
    assert set(phones.values()) == {*VALID, BIG}

    first_three = campaign_pipeline.preview(campaign_id, 3, database_url=sqlite_store.database_url)
    assert first_three.equals(frame.head(3))
    none = campaign_pipeline.preview(campaign_id, 0, database_url=sqlite_store.database_url)
    assert list(none.columns) == columns and len(none) == 0
    assert all(none[column].dtype == pd.StringDtype() for column in columns)


def test_queue_limit_is_assumed_when_sqs_is_not_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without AWS_SQS_QUEUE_URL, 1 MiB is assumed and the source says so."""
    monkeypatch.delenv("AWS_SQS_QUEUE_URL", raising=False)
    limit = queue_limit_from_environment()
    assert (limit.max_message_bytes, limit.source) == (ASSUMED_MAX_MESSAGE_BYTES, ASSUMED_SOURCE)
    assert limit.missing == ("AWS_SQS_QUEUE_URL",)


def test_text_report_masks_the_sample_and_keeps_reasons_verbatim() -> None:
    """Sizes in a reason stay as they are; the sample's phone numbers become ***NN."""
    too_large = "payload is 1048577 bytes, over the queue's maximum message size of 1048576 bytes"
    report = PreviewReport(
        campaign_id="c",
        name="n",
        message_type="text",
        status="draft",
        max_message_bytes=ASSUMED_MAX_MESSAGE_BYTES,
        max_message_bytes_source=ASSUMED_SOURCE,
        recipients=2,
        valid=1,
        invalid_by_reason=Counter({too_large: 1}),
        sample=['{"to":"+15550000001","messageContent":"call +15550000001"}'],
    )

    lines = format_preview(report)

    assert f"invalid     1  {too_large}" in lines
    assert lines[-1] == '  {"to":"***01","messageContent":"call ***01"}'
