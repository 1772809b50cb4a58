"""What a send did, counted: for the op's metadata, the CLI's summary and the guards."""

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class SendStats:
    """What one run did for a campaign, for the op's metadata and the CLI's summary."""

    recipients: int = 0
    queued: int = 0
    failed_by_reason: Counter[str] = field(default_factory=Counter)
    # The same recipients by failure code (`failure_codes.FailureCode`).
    failed_by_code: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    retried_entries: int = 0
    seconds: float = 0.0
    # Entries SQS refused for good, by error code.
    rejected_by_code: Counter[str] = field(default_factory=Counter)
    # Why sending stopped before every pending recipient had an outcome: "paused",
    # "cancelled" (the campaign's status), "rejected" (more than the run's bound of entries
    # refused for good) or what the caller's StopSignal said.
    stopped: str | None = None

    @property
    def rejected(self) -> int:
        """Entries SQS refused for good."""
        return sum(self.rejected_by_code.values())

    @property
    def failed(self) -> int:
        """Recipients marked failed by this run."""
        return sum(self.failed_by_reason.values())

    @property
    def messages_per_second(self) -> float:
        """Recipients handled (queued or failed) per second of wall time."""
        return (self.queued + self.failed) / self.seconds if self.seconds else 0.0


def merge_stats(parts: Iterable[SendStats]) -> SendStats:
    """The stats of several send steps as one (their durations overlap: the longest counts)."""
    total = SendStats()
    for part in parts:
        total.recipients += part.recipients
        total.queued += part.queued
        total.failed_by_reason += part.failed_by_reason
        total.failed_by_code += part.failed_by_code
        total.batches += part.batches
        total.retried_entries += part.retried_entries
        total.rejected_by_code += part.rejected_by_code
        total.seconds = max(total.seconds, part.seconds)
        total.stopped = total.stopped or part.stopped
    return total
