"""The value types the store hands out and takes in: plain, frozen where they can be."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from campaign_pipeline.categories import category_of
from campaign_pipeline.failure_codes import FailureCode
from campaign_pipeline.payloads import CampaignMessage, parse_template_parameters


@dataclass(frozen=True)
class CampaignToProcess:
    """A campaign waiting in `asset_generated` (or resumed), as the sensor sees it."""

    id: str
    organization_id: str
    version: int
    name: str = ""


@dataclass(frozen=True)
class ScheduledCampaign:
    """The next campaign in `asset_generated` whose `send_at` is still ahead."""

    id: str
    name: str
    send_at: datetime


@dataclass(frozen=True)
class StalledCampaign:
    """A `ready_to_launch` campaign with pending recipients and no live run, to be resumed."""

    id: str
    organization_id: str
    version: int
    resume_attempts: int
    last_error: str | None
    # The run whose lease has not expired yet, if any: live unless Dagster says it finished.
    lease_run_id: str | None = None


@dataclass(frozen=True)
class Claim:
    """A campaign this run may send for, and whether it resumes an earlier run's work."""

    message: CampaignMessage
    name: str
    resumed: bool
    counts: dict[str, int] = field(default_factory=dict)
    # The campaign's own rate cap (`max_messages_per_second`), as stored; None when unset.
    max_messages_per_second: float | None = None
    # `resume --accept-invalid`: send the valid recipients whatever the preflight counts.
    invalid_accepted: bool = False


@dataclass(frozen=True)
class WriteAck:
    """What an outcome write or lease renewal learnt: the lease still held, the status now."""

    lease_held: bool
    status: str | None


@dataclass(frozen=True)
class IdRange:
    """Recipients with `after < id <= upto` (no upper bound when `upto` is None)."""

    after: str = ""
    upto: str | None = None


@dataclass(frozen=True)
class ControlResult:
    """What a command did: the status before and after, and one line saying so."""

    campaign_id: str
    command: str
    before: str
    after: str
    changed: bool
    message: str
    lease_run_id: str | None = None


@dataclass
class Outcomes:
    """Final states of recipients as parallel columns: cheap to gather, sent as arrays.

    `ready_to_send` rows carry the SQS message id, `failed` rows the reason and its code.
    """

    ids: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    message_ids: list[str | None] = field(default_factory=list)
    failure_reasons: list[str | None] = field(default_factory=list)
    failure_codes: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def add_sent(self, ids: Sequence[str], message_ids: Sequence[str]) -> None:
        """Recipients SQS accepted, with their message ids."""
        self.ids += ids
        self.statuses += ["ready_to_send"] * len(ids)
        self.message_ids += message_ids
        self.failure_reasons += [None] * len(ids)
        self.failure_codes += [None] * len(ids)

    def add_failed(self, ids: Sequence[str], reasons: Sequence[str], code: FailureCode) -> None:
        """Recipients that will not be sent, with why (a line each) and the code of it."""
        self.ids += ids
        self.statuses += ["failed"] * len(ids)
        self.message_ids += [None] * len(ids)
        self.failure_reasons += reasons
        self.failure_codes += [code.value] * len(ids)

    def rows(self, start: int, stop: int) -> dict[str, list[Any]]:
        """Columns of rows `start` to `stop`, named as the SQL's parameters."""
        return {
            "ids": self.ids[start:stop],
            "statuses": self.statuses[start:stop],
            "message_ids": self.message_ids[start:stop],
            "reasons": self.failure_reasons[start:stop],
            "codes": self.failure_codes[start:stop],
        }


def campaign_message(row: Mapping[Any, Any]) -> CampaignMessage:
    """The campaign-level part of its payloads, from its row, exactly as a run's claim reads it.

    Raises:
        CampaignDefinitionError: the stored template parameters are malformed.
    """
    return CampaignMessage(
        campaign_id=row["id"],
        organization_id=row["organization_id"],
        message_type=row["message_type"],
        template_name=row["template_name"],
        template_language=row["template_language"],
        template_parameters=parse_template_parameters(row["template_parameters"]),
        message_content=row["message_content"],
        media_url=row["media_url"],
        caption=row["caption"],
        category=category_of(row.get("category")),
    )
