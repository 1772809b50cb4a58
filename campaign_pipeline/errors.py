"""The one exception hierarchy of campaign_pipeline: every error says one line a person can act on.

```
CampaignPipelineError
├── SettingsError               an environment variable holds an unusable value
├── CampaignDefinitionError     the campaign itself can never be sent (its template, its type)
├── CampaignNotFound            no campaign has that id
├── CampaignNotProcessable      its status keeps a run from taking it now
│   ├── CampaignStopped         paused or cancelled by an operator (no failure)
│   ├── CampaignScheduled       its send_at is still ahead
│   └── CampaignBusy            another run holds its lease
├── CampaignControlError        pause, resume, cancel or schedule could not be applied
│   └── CampaignControlRefused  the command does not apply to the campaign's status
├── CampaignHeldBack            a guard paused the campaign before it did harm
├── SendInterrupted             a send stopped early; the rest stay pending
├── IncompleteAnswer            SendMessageBatch left entries out of its answer
├── DagsterError                the Dagster webserver refused or failed a request
│   └── DagsterUnavailable      it did not answer at all
├── PreviewError                the campaign cannot be previewed
├── TokenError                  an API token (or where tokens come from) is unusable
├── BrokerUnreachable           the Celery broker does not answer
├── InvalidCampaignId           the text given as a campaign id is not a UUID
├── InvalidSuppression          an organization, number or scope to suppress is unusable
├── SuppressionFileError        a file of numbers to suppress cannot be read
└── DemoUnavailable             the demo cannot start (its database, its local SQS server)
```

Dagster-free: the ops turn these into `dg.Failure` (see `defs/ops/failures.py`), the CLI into
one line and exit status 2, the HTTP API into `{"error": ...}` with a status per class.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from campaign_pipeline.sending.stats import SendStats


class CampaignPipelineError(Exception):
    """Something this pipeline cannot do, said in one line for a person."""


class SettingsError(CampaignPipelineError, ValueError):
    """An environment variable holds a value the pipeline cannot use."""


class CampaignDefinitionError(CampaignPipelineError, ValueError):
    """The campaign's own definition makes every payload invalid (a bad template, say)."""


class CampaignNotFound(CampaignPipelineError):
    """No campaign has that id."""


class CampaignNotProcessable(CampaignPipelineError):
    """The campaign's status, schedule or lease keeps a run from processing it now."""


class CampaignStopped(CampaignNotProcessable):
    """An operator paused or cancelled the campaign: runs leave it alone, and that is no failure."""


class CampaignScheduled(CampaignNotProcessable):
    """The campaign's `send_at` is still in the future."""


class CampaignBusy(CampaignNotProcessable):
    """Another run holds the campaign's lease."""

    def __init__(self, message: str, lease_run_id: str) -> None:
        super().__init__(message)
        self.lease_run_id = lease_run_id


class CampaignControlError(CampaignPipelineError):
    """A command could not be applied (the campaign kept changing under it)."""


class CampaignControlRefused(CampaignControlError):
    """The command does not apply to the campaign's status."""


class CampaignHeldBack(CampaignPipelineError):
    """A guard paused the campaign (too many invalid recipients, SQS refusing too many)."""

    def __init__(self, message: str, stats: "SendStats | None" = None) -> None:
        super().__init__(message)
        self.stats = stats


class SendInterrupted(CampaignPipelineError):
    """Sending stopped before every pending recipient had an outcome; the rest stay pending."""

    def __init__(self, message: str, stats: "SendStats") -> None:
        super().__init__(message)
        self.stats = stats


class IncompleteAnswer(CampaignPipelineError):
    """SendMessageBatch answered 200 without naming some entries as Successful or Failed."""


class DagsterError(CampaignPipelineError):
    """The Dagster webserver answered with an error of its own (a refused run config, say)."""


class DagsterUnavailable(DagsterError):
    """The Dagster webserver did not answer, or answered without the code location's job."""


class PreviewError(CampaignPipelineError):
    """The campaign cannot be previewed, for a reason a person can act on."""


class TokenError(CampaignPipelineError):
    """An API token, or a variable or file that holds tokens, cannot be used."""


class BrokerUnreachable(CampaignPipelineError):
    """The Celery broker does not answer."""


class InvalidCampaignId(CampaignPipelineError, ValueError):
    """The text given as a campaign id is not a UUID."""


class InvalidSuppression(CampaignPipelineError, ValueError):
    """An organization id, phone number or scope given to suppress cannot be used."""


class SuppressionFileError(CampaignPipelineError):
    """A file of numbers to suppress cannot be read; nothing of it was added."""


class DemoUnavailable(CampaignPipelineError):
    """The demo cannot start: its database holds other campaigns, or its SQS server did not."""
