"""The campaign lifecycle's pure state machine, `lifecycle.decide`, for every status and command.

No database: each (status, command, handled) case is checked against the table below, written
out by hand. The table, not the code, is the oracle; a status added to `CAMPAIGN_STATUSES`
without a row here fails `test_the_table_covers_every_status_and_command`.
"""

import itertools

import pytest

from campaign_pipeline.lifecycle import (
    COMMANDS,
    PAUSABLE_STATUSES,
    STOPPED_STATUSES,
    Decision,
    decide,
)
from campaign_pipeline.store.schema import CAMPAIGN_STATUSES

REFUSED = "refused"
UNCHANGED = "unchanged"

# What each command does to a campaign in each status: the new status, "unchanged" (nothing to
# do, not an error) or "refused" (the command does not apply). Resume depends on `handled`
# (some recipient has an outcome, or a run holds a live lease); pause and cancel do not.
#                   pause        resume, nothing handled  resume, handled    cancel
EXPECTED = {
    "draft": (REFUSED, REFUSED, REFUSED, "cancelled"),
    "asset_generated": ("paused", REFUSED, REFUSED, "cancelled"),
    "ready_to_launch": ("paused", REFUSED, REFUSED, "cancelled"),
    "paused": (UNCHANGED, "asset_generated", "ready_to_launch", "cancelled"),
    "cancelled": (REFUSED, REFUSED, REFUSED, UNCHANGED),
    "failed": (REFUSED, REFUSED, REFUSED, "cancelled"),
}
COLUMNS = {
    ("pause", False): 0,
    ("pause", True): 0,
    ("resume", False): 1,
    ("resume", True): 2,
    ("cancel", False): 3,
    ("cancel", True): 3,
}
CASES = list(itertools.product(CAMPAIGN_STATUSES, COMMANDS, (False, True)))


def expected(status: str, command: str, handled: bool) -> str:
    return EXPECTED[status][COLUMNS[(command, handled)]]


def test_the_table_covers_every_status_and_command() -> None:
    """Every status of the schema and every command has an expected outcome above."""
    assert set(EXPECTED) == set(CAMPAIGN_STATUSES)
    assert {command for command, _ in COLUMNS} == set(COMMANDS)
    assert len(CASES) == len(CAMPAIGN_STATUSES) * 3 * 2


@pytest.mark.parametrize(("status", "command", "handled"), CASES)
def test_decision_matches_the_table(status: str, command: str, handled: bool) -> None:
    """Each (status, command, handled) gives the table's new status, no change, or a refusal."""
    decision = decide(command, status, handled=handled)  # type: ignore[arg-type]
    want = expected(status, command, handled)
    assert isinstance(decision, Decision)
    if want == REFUSED:
        assert decision.refused
        assert decision.target is None
    elif want == UNCHANGED:
        assert not decision.refused
        assert decision.target is None
    else:
        assert not decision.refused
        assert decision.target == want


@pytest.mark.parametrize(("status", "command", "handled"), CASES)
def test_every_decision_says_why_in_one_line(status: str, command: str, handled: bool) -> None:
    """The message is one non-empty line; a refusal names the status it refused."""
    decision = decide(command, status, handled=handled)  # type: ignore[arg-type]
    assert decision.message.strip()
    assert "\n" not in decision.message
    if decision.refused:
        assert repr(status) in decision.message


@pytest.mark.parametrize("handled", [False, True])
def test_resume_of_paused_depends_on_handled(handled: bool) -> None:
    """A paused campaign resumes to ready_to_launch if anything was handled, else starts over."""
    decision = decide("resume", "paused", handled=handled)
    assert decision.target == ("ready_to_launch" if handled else "asset_generated")
    assert decision.target in decision.message


def test_a_cancelled_campaign_is_never_left() -> None:
    """No command takes a cancelled campaign to another status."""
    for command, handled in itertools.product(COMMANDS, (False, True)):
        assert decide(command, "cancelled", handled=handled).target is None


def test_targets_are_statuses_of_the_schema() -> None:
    """Every new status a decision names is one of the schema's."""
    targets = {decide(c, s, handled=h).target for s, c, h in CASES} - {None}
    assert targets == {"paused", "asset_generated", "ready_to_launch", "cancelled"}
    assert targets <= set(CAMPAIGN_STATUSES)


def test_status_sets_agree_with_the_table() -> None:
    """Pausable statuses are those pause moves; stopped ones are those pause and cancel end in."""
    assert {s for s in CAMPAIGN_STATUSES if EXPECTED[s][0] == "paused"} == PAUSABLE_STATUSES
    assert frozenset({"paused", "cancelled"}) == STOPPED_STATUSES


def test_unknown_command_is_an_error() -> None:
    """A command outside COMMANDS raises ValueError naming it."""
    with pytest.raises(ValueError, match="'restart'"):
        decide("restart", "paused", handled=False)  # type: ignore[arg-type]
