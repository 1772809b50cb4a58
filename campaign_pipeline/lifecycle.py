"""A campaign's lifecycle under an operator's commands, as a pure state machine.

The store applies a decision as a compare-and-set on the status and version it was made from,
so a run, both sensors and a second operator acting at the same moment cannot undo each other.

```
draft ──(upstream)──> asset_generated ──claim──> ready_to_launch ──(all sent)──> (stays)
                           │    ^                    │    ^
                     pause │    │ resume       pause │    │ resume
                           v    │ (nothing handled)  v    │ (something handled)
                           paused ───────────────────┘
any status but cancelled ──cancel──> cancelled (final: nothing processes it again)
```
"""

from dataclasses import dataclass
from typing import Literal

Command = Literal["pause", "resume", "cancel"]
COMMANDS: tuple[Command, ...] = ("pause", "resume", "cancel")
# A run sending for a campaign in one of these statuses stops.
STOPPED_STATUSES = frozenset({"paused", "cancelled"})
PAUSABLE_STATUSES = frozenset({"asset_generated", "ready_to_launch"})


@dataclass(frozen=True)
class Decision:
    """What a command does to a campaign in a given status.

    `target` is the new status, or None when nothing changes; `refused` says the command does
    not apply (a one-line `message` says why), as opposed to having nothing to do.
    """

    target: str | None
    message: str
    refused: bool = False


def decide(command: Command, status: str, *, handled: bool) -> Decision:
    """The decision for `command` on a campaign in `status`.

    `handled` says whether any recipient has an outcome, or a run may still be recording one:
    a resumed campaign then continues as `ready_to_launch`, else starts over as
    `asset_generated`.
    """
    if command == "pause":
        if status == "paused":
            return Decision(None, "is already paused")
        if status in PAUSABLE_STATUSES:
            return Decision("paused", "paused")
        return Decision(
            None,
            f"is {status!r}; only 'asset_generated' or 'ready_to_launch' campaigns can be paused",
            refused=True,
        )
    if command == "resume":
        if status == "paused":
            target = "ready_to_launch" if handled else "asset_generated"
            return Decision(target, f"resumed as {target!r}")
        if status == "cancelled":
            return Decision(None, "is 'cancelled'; a cancelled campaign is never resumed", True)
        return Decision(None, f"is {status!r}; only 'paused' campaigns can be resumed", True)
    if command == "cancel":
        if status == "cancelled":
            return Decision(None, "is already cancelled")
        return Decision("cancelled", "cancelled; it will never be processed again")
    raise ValueError(f"unknown command {command!r}")
