"""`lifecycle.refusal`: why a run cannot take a campaign, as one table over every case.

The claim, `trigger`, the HTTP API's process-messages and preview all ask this one function;
here it is checked on plain rows, against a table written in the test.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from campaign_pipeline.errors import (
    CampaignBusy,
    CampaignNotProcessable,
    CampaignScheduled,
    CampaignStopped,
)
from campaign_pipeline.lifecycle import refusal
from campaign_pipeline.store.schema import CAMPAIGN_STATUSES

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
EARLIER = NOW - timedelta(hours=1)


def row(status: str, **fields: Any) -> dict[str, Any]:
    return {"id": "c-1", "status": status, "send_at": None, "lease_run_id": None} | fields


# (status, row fields, refusal's keywords) -> the error it returns, None when a run may take it.
CASES: list[tuple[str, dict[str, Any], dict[str, Any], type[Exception] | None]] = [
    ("asset_generated", {}, {}, None),
    ("asset_generated", {"send_at": EARLIER}, {}, None),
    ("asset_generated", {"send_at": LATER}, {}, CampaignScheduled),
    ("asset_generated", {"send_at": LATER}, {"send_now": True}, None),
    ("ready_to_launch", {}, {}, None),
    ("ready_to_launch", {}, {"pending": 3}, None),
    ("ready_to_launch", {}, {"pending": 0}, CampaignNotProcessable),
    # A scheduled time only holds back a campaign nobody has claimed yet.
    ("ready_to_launch", {"send_at": LATER}, {}, None),
    (
        "ready_to_launch",
        {"lease_run_id": "run-a", "lease_expires_at": LATER},
        {"run_id": "run-b"},
        CampaignBusy,
    ),
    (
        "ready_to_launch",
        {"lease_run_id": "run-a", "lease_expires_at": LATER},
        {"run_id": "run-a"},
        None,
    ),
    (
        "ready_to_launch",
        {"lease_run_id": "run-a", "lease_expires_at": EARLIER},
        {"run_id": "run-b"},
        None,
    ),
    # Without a run id (a launcher), the lease is left to the claim.
    ("ready_to_launch", {"lease_run_id": "run-a", "lease_expires_at": LATER}, {}, None),
    ("paused", {"paused_by": "alice"}, {}, CampaignStopped),
    ("paused", {}, {"send_now": True}, CampaignStopped),
    ("cancelled", {"cancelled_by": "bob"}, {}, CampaignStopped),
    ("cancelled", {}, {"pending": 5}, CampaignStopped),
    ("draft", {}, {}, CampaignNotProcessable),
    ("failed", {}, {}, CampaignNotProcessable),
    ("failed", {}, {"send_now": True}, CampaignNotProcessable),
]


@pytest.mark.parametrize(("status", "fields", "keywords", "expected"), CASES)
def test_refusal_follows_the_table(
    status: str, fields: dict[str, Any], keywords: dict[str, Any], expected: type[Exception] | None
) -> None:
    found = refusal(row(status, **fields), now=NOW, **keywords)
    if expected is None:
        assert found is None, found
    else:
        assert type(found) is expected, found
        line = str(found)
        assert "\n" not in line and "c-1" in line


def test_every_status_is_in_the_table() -> None:
    assert {case[0] for case in CASES} == set(CAMPAIGN_STATUSES)


def test_a_busy_campaign_names_the_run_holding_it() -> None:
    found = refusal(
        row("ready_to_launch", lease_run_id="run-a", lease_expires_at=LATER),
        now=NOW,
        run_id="run-b",
    )
    assert isinstance(found, CampaignBusy)
    assert found.lease_run_id == "run-a"
    assert "run run-a" in str(found)
