"""The HTTP API's request and response bodies, which its OpenAPI document describes.

The response models mirror the CLI's `--json` documents (`status`, `preview`) field for field;
`sqs-status` answers with `services.sqs_health.SqsStatus` itself. The application checks every
answer against them, so the document cannot drift from what is sent.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from campaign_pipeline.phone_numbers import E164_PATTERN

# Numbers one POST may suppress: the body stays under the server's 16 KiB; more: `suppress import`.
MAX_NUMBERS_PER_REQUEST = 500


class Body(BaseModel):
    """A request body: unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


class ProcessRequest(Body):
    """Options of `process-messages`; the body may be left out."""

    now: bool = Field(False, description="start a campaign scheduled for later now")


class ResumeRequest(Body):
    """Options of `resume`; the body may be left out."""

    accept_invalid: bool = Field(
        False,
        description="send the valid recipients however many others the preflight found invalid",
    )


class ErrorBody(BaseModel):
    """Every error: one line for a person."""

    error: str


class ProcessAccepted(BaseModel):
    """A run was launched for the campaign (the spec's process-messages)."""

    runId: str  # the spec's camelCase
    status: str | None = Field(description="the run's Dagster status just after launch")
    url: str = Field(description="the run's page in the Dagster UI")
    campaignId: str
    action: str = Field(description="'process' a new campaign, or 'resume' one already started")


class ControlAnswer(BaseModel):
    """What pause, resume or cancel did."""

    campaign_id: str
    command: str
    before: str
    after: str
    changed: bool
    message: str


class Counts(BaseModel):
    """Recipients by status."""

    pending: int
    ready_to_send: int
    failed: int


class Progress(BaseModel):
    """The sending run's pace and the time left at it."""

    run_id: str
    handled: int
    messages_per_second: float | None
    eta_seconds: int | None


class RunEntry(BaseModel):
    """One of the campaign's runs, newest first."""

    run_id: str
    status: str
    start_time: str | None
    end_time: str | None
    url: str


class CampaignStatus(BaseModel):
    """The `status --json` document, and why the runs are missing when Dagster did not answer."""

    id: str
    name: str | None
    message_type: str | None
    status: str
    send_at: str | None
    counts: Counts
    failed_by_code: dict[str, int] = Field(
        description="Failed recipients by failure_code (`unknown`: failed before codes existed)"
    )
    progress: Progress | None
    last_error: str | None
    last_error_at: str | None
    last_error_run_id: str | None
    paused_at: str | None
    paused_by: str | None
    resumed_at: str | None
    resumed_by: str | None
    cancelled_at: str | None
    cancelled_by: str | None
    runs: list[RunEntry]
    runs_error: str | None = None


class Preview(BaseModel):
    """The `preview --json` document: counts, invalid by reason, the first valid payloads."""

    campaign_id: str
    name: str | None
    message_type: str
    status: str
    recipients: int
    valid: int
    invalid: dict[str, int]
    skipped: dict[str, int] = Field(
        description="Valid recipients a run would not queue, by failure_code (duplicate, ...)"
    )
    max_message_bytes: int
    max_message_bytes_source: str
    sample: list[dict[str, Any]]


class Health(BaseModel):
    """The server runs; whether what it depends on answers (reasons are in the server's log)."""

    status: str = Field(description="'ok' when all three answer, else 'degraded'")
    campaign_store: bool
    sqs: bool
    dagster: bool


class SuppressRequest(Body):
    """Numbers to suppress for the organization: all valid E.164, or nothing is added."""

    phone_numbers: list[Annotated[str, Field(pattern=E164_PATTERN)]] = Field(
        min_length=1,
        max_length=MAX_NUMBERS_PER_REQUEST,
        description="E.164 numbers (+ and 8 to 15 digits); one malformed refuses them all",
    )
    scope: Literal["marketing", "all"] = Field(
        "marketing", description="marketing: no marketing campaign; all: no campaign"
    )
    reason: str | None = Field(None, description="why, for the record (one line)")


class SuppressionEntry(BaseModel):
    """One suppressed number (`suppress list --json`)."""

    phone_number: str
    scope: str
    reason: str | None
    source: str | None
    created_at: str


class SuppressionsAdded(BaseModel):
    """What a POST of numbers did."""

    organization_id: str
    scope: str
    added: int = Field(description="numbers new to the list")
    present: int = Field(description="numbers already on it (an `all` widens a `marketing` one)")


class SuppressionRemoved(BaseModel):
    """A number taken off the list."""

    organization_id: str
    removed: int
