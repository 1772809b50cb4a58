"""Run the fault scenarios and write `docs/reliability.md` from what they recorded.

Each scenario of `tests/integration/test_faults.py` (faults), `test_stop.py` (pause, cancel and
Terminate mid-send) and `test_properties.py` (hypothesis's recipients through the job) appends
one JSON line to $RELIABILITY_LOG once the campaign invariant has held
(`tests/support/reliability_log.py`): what was injected, how often (the fault proxy's counters),
what the runs did, and what was found in the queue and the tables; each sweep for planted
secrets (`test_secrets.py`) and API tokens (`tests/e2e/test_http_api.py`'s token test) appends
one once nothing was found. This script runs the tests with that variable set (and
`test_hostile_input.py`, whose corpus checks the same invariant on hostile recipients), then
turns the lines into the report's tables, so the report can be regenerated at any time:

    .venv/bin/python scripts/reliability_report.py                   # run the tests, write it
    .venv/bin/python scripts/reliability_report.py --from-log F.jsonl  # from an earlier log
    .venv/bin/python scripts/reliability_report.py -- -k outage      # extra pytest arguments

The tests need what the rest of the suite needs: PostgreSQL on 127.0.0.1:5432 (or
TEST_POSTGRES_URL) and moto, started by the tests themselves. Exit status 1 when a test failed;
the report is written anyway and lists the failures.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "docs" / "reliability.md"
TEST_FILES = (
    "tests/integration/test_faults.py",
    "tests/integration/test_hostile_input.py",
    "tests/integration/test_properties.py",
    "tests/integration/test_stop.py",
    "tests/integration/test_secrets.py",
    "tests/e2e/test_http_api.py::test_no_token_is_in_any_log_or_in_dagster",
)
LOG_VARIABLE = "RELIABILITY_LOG"


@dataclass
class TestRun:
    """What pytest reported, file by file, and how it was run."""

    command: str
    seconds: float
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Whether any test failed or errored."""
        return bool(self.failures)


def run_tests(log: Path, junit: Path, pytest_args: Sequence[str]) -> TestRun:
    """Run the scenario files with $RELIABILITY_LOG set; read the outcome from the JUnit XML."""
    command = [sys.executable, "-m", "pytest", *TEST_FILES, "-q", f"--junitxml={junit}"]
    command += list(pytest_args)
    started = time.monotonic()
    subprocess.run(command, cwd=REPO, env={**os.environ, LOG_VARIABLE: str(log)}, check=False)
    shown = ["python", "-m", "pytest", *TEST_FILES, *pytest_args]
    return read_junit(junit, f"{LOG_VARIABLE}=<log> " + shlex.join(shown), started)


def read_junit(junit: Path, command: str, started: float) -> TestRun:
    """Counts of passed, failed, skipped and expected failures per test file."""
    run = TestRun(command=command, seconds=time.monotonic() - started)
    if not junit.exists():
        run.failures.append("pytest wrote no results (it could not start)")
        return run
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        path = case.get("classname", "").replace(".", "/") + ".py"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                run.failures.append(f"{path}::{case.get('name')}")
            elif child.tag == "skipped":
                is_xfail = (child.get("type") or "").endswith("xfail")
                outcome = "xfailed" if is_xfail else "skipped"
        run.counts.setdefault(path, {})
        run.counts[path][outcome] = run.counts[path].get(outcome, 0) + 1
    return run


def read_log(log: Path) -> list[dict[str, Any]]:
    """The scenarios' records, in the order they ran."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]


def commit() -> str:
    """The checked-out commit, marked when the working tree has changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" with uncommitted changes" if git("status", "--porcelain") else "")


def cell(text: object) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "/").replace("\n", " ")


def how_often(row: dict[str, Any]) -> str:
    """The proxy's counts of each fault, most frequent first."""
    injections = sorted(row.get("injections", {}).items(), key=lambda item: (-item[1], item[0]))
    counted = "; ".join(f"{count}x {kind}" for kind, count in injections) or "nothing"
    calls = row.get("batch_calls", 0)
    return f"{counted} (in {calls} batch calls)" if calls else counted


def duplicates(row: dict[str, Any]) -> str:
    """Extra copies found, and how many the scenario allows."""
    found, bound = row["duplicates"], row.get("duplicate_bound", 0)
    if row["queue"] == "FIFO":
        return f"{found} (none allowed)"
    return f"{found} (≤ {bound} allowed)"


def table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The scenarios as a markdown table, one row each."""
    lines = [
        "| # | group | scenario | queue, store | injected | how often | runs | "
        "queued / failed / pending | duplicates | replies lost | FIFO resends dropped |",
        "|---:|---|---|---|---|---|---|---|---|---:|---:|",
    ]
    for number, row in enumerate(rows, 1):
        lines.append(
            "| "
            + " | ".join(
                cell(value)
                for value in (
                    number,
                    row["group"],
                    row["scenario"],
                    f"{row['queue']}, {row['database']}",
                    row["injected"],
                    how_often(row),
                    "; ".join(f"{i}. {run}" for i, run in enumerate(row["runs"], 1)),
                    f"{row['queued']} / {row['failed']} / {row['pending']}",
                    duplicates(row),
                    row.get("unanswered_entries", 0),
                    row.get("deduplicated_entries", 0) if row["queue"] == "FIFO" else "",
                )
            )
            + " |"
        )
    return lines


def exposure_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The secret and token sweeps as a markdown table, one row each."""
    lines = [
        "| # | scenario | planted | searched | texts searched | found |",
        "|---:|---|---|---|---:|---:|",
    ]
    for number, row in enumerate(rows, 1):
        values = (
            number,
            row["scenario"],
            "; ".join(row["planted"]),
            "; ".join(row["searched"]),
            f"{row['texts']:,}",
            row["found"],
        )
        lines.append("| " + " | ".join(cell(value) for value in values) + " |")
    return lines


def defaults() -> dict[str, Any]:
    """The settings the guarantees depend on, read from the code so the prose stays true."""
    sys.path.insert(0, str(REPO))
    from botocore.retries.quota import RetryQuota

    from campaign_pipeline.defs.ops import CampaignConfig
    from campaign_pipeline.resources.sqs_queue import DEFAULT_MAX_CONCURRENT_BATCHES, SqsQueue
    from campaign_pipeline.sending.outcomes import WRITES_IN_FLIGHT

    config, queue = CampaignConfig.model_fields, SqsQueue.model_fields
    values = {
        "writes_in_flight": WRITES_IN_FLIGHT,
        "outcomes_per_write": config["outcomes_per_write"].default,
        "lease_seconds": config["lease_seconds"].default,
        "max_concurrent_batches": DEFAULT_MAX_CONCURRENT_BATCHES,
        "max_attempts": queue["max_attempts"].default,
        "max_entry_retries": queue["max_entry_retries"].default,
        "retry_quota": RetryQuota.INITIAL_CAPACITY,
    }
    values["crash_window"] = (values["writes_in_flight"] + 1) * values["outcomes_per_write"] + (
        values["max_concurrent_batches"] * 10
    )
    return values


NOT_GUARANTEED = """\
## What is not guaranteed, and why

- **A standard queue can hold a recipient more than once.** SQS answers a `SendMessageBatch`
  only after storing it; when that answer is lost (a read timeout, a reset connection, a 5xx
  from a frontend after the store) the client cannot tell a stored batch from a lost one, and
  botocore sends it again (up to {max_attempts} attempts). Each lost answer is one extra copy
  of up to 10 messages, within the run: rows "after SQS stored it" show exactly one duplicate
  per entry whose reply was lost. Across runs, a run killed (SIGKILL, lost machine) or cut off
  from its database between SQS accepting a batch and the outcome write leaves those recipients
  `pending` with their message already queued, and the next run sends them again. That crash
  window is the outcome windows being written ({writes_in_flight}), the one being filled
  ({outcomes_per_write:,} outcomes each) and the batches in flight ({max_concurrent_batches} calls
  of 10): at most {crash_window:,} recipients with the defaults. Every copy carries the same
  `campaignAudienceId`; the consumer must drop repeats by it.
- **A FIFO queue drops a resend only within 5 minutes.** The deduplication id
  (`<campaign_id>:<audience_id>`) absorbs every resend above, for 5 minutes after the first
  send. A rerun later than that resends the unrecorded recipients as new messages. A crashed
  run's lease lasts {lease_seconds:.0f} s after its last renewal (renewed every third of that
  while it sends), so a rerun that has to wait for the lease (nothing marked the run failed)
  comes well inside the window; a rerun started by hand after more than 5 minutes does not, and
  a consumer that must never see a repeat drops it by `campaignAudienceId`.
- **A killed run needs Dagster to notice.** The claim takes the lease over from a run only when
  the run's own Dagster instance says the run has finished; until then, and until its lease
  expires, another run of the campaign is refused (rows "SIGKILL": the rerun is refused, then
  succeeds once the run is marked failed). With `deploy/dagster.yaml`, the code server that
  launched a run notices its process died and marks the run failed within a second
  (`tests/e2e/test_recovery_e2e.py`); but `DefaultRunLauncher` offers run monitoring no health
  check of its own, so a run whose code server died with it stays `STARTED` until someone marks
  it failed, and its campaign waits.
- **A recipient can be `failed` although a copy was queued.** When an answer is lost and the
  resend is then refused for good (a KMS key disabled in between, say), the recipient is
  `failed` with SQS's reason while the first copy is in the queue. The tests' entry faults are
  drawn per entry for permanent codes, as SQS validates a resend the same way, so they never
  produce this case.
- **Throttling can end in `failed`.** An entry SQS keeps reporting as throttled (or as a server
  fault) is resent {max_entry_retries} times, then recorded `failed` with SQS's code rather
  than left `pending` (row "partial batch failures" on SQLite, with one resend). Whole calls get
  {max_attempts} attempts from botocore, which also stops retrying when its retry quota
  ({retry_quota} tokens per client, 5 per throttled retry, 14 per other retry) runs out; the run
  then fails and leaves the rest `pending`.
- **What PostgreSQL has committed, stays.** A recipient is `ready_to_send` only after SQS
  confirmed it, and an outcome is written only over `pending`. A database that loses committed
  writes (asynchronous replication with a failover, `synchronous_commit = off`) can turn
  recorded recipients back into `pending`: the next run sends them again.
- **Delivery to the consumer is SQS's.** A standard queue delivers at least once and in no
  order; any queue redelivers a message whose visibility timeout passes before the consumer
  deletes it. Messages of one campaign are queued concurrently, so not in audience order, even
  on FIFO.
- **The SQS here is moto.** Throttling, partial failures, timeouts and resets are the proxy's,
  worded as SQS's JSON protocol words them (`x-amzn-query-error`); real SQS may fail in ways
  not listed here. moto forgets a deduplication id once its message is deleted and answers a
  dropped FIFO resend with a new message id; the proxy deduplicates FIFO sends itself as SQS
  does (the first message's id, also after a delete).
"""


def rewrap(text: str, width: int = 100) -> list[str]:
    """Markdown paragraphs and bullets refilled to `width` once values are filled in."""
    lines: list[str] = []
    for block in text.strip().split("\n- "):
        first, *rest = block.split("\n", 1) if block.startswith("#") else ("", block)
        if first:
            lines += [first, ""]
        body = " ".join(" ".join(rest).split())
        if not body:
            continue
        bullet = not block.startswith("#")
        lines += textwrap.wrap(
            ("- " if bullet else "") + body,
            width,
            subsequent_indent="  " if bullet else "",
            break_on_hyphens=False,
        )
    return lines


def write_report(
    rows: Sequence[dict[str, Any]], run: TestRun | None, source: str, output: Path
) -> None:
    """Write the markdown report."""
    settings = defaults()
    faults = [row for row in rows if row.get("kind") != "exposure"]
    sweeps = [row for row in rows if row.get("kind") == "exposure"]
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Reliability under injected faults",
        "",
        "Each row is one scenario of `tests/integration/test_faults.py` (faults injected while "
        "a campaign is sent: SQS through a fault-injecting proxy in front of moto's server, "
        "PostgreSQL or SQLite, Dagster runs in and out of process), `test_stop.py` (pause, "
        "cancel and Terminate mid-send) or `test_properties.py` (hypothesis's recipients through "
        "the job), then the campaign invariant checked "
        "(`tests/support/invariant.py`): every recipient is `ready_to_send` with an "
        "`sqs_message_id` "
        "that is in the queue, or `failed` with a specific reason, or `pending` and sent by the "
        "next run; no recipient twice on a FIFO queue; on a standard queue duplicates only from "
        "a lost reply or the crash window, each with the recipient's `campaignAudienceId`. A "
        "row is written only once the invariant held after the last run of the scenario.",
        "",
        f"Generated {now} from commit {commit()} by "
        f"`{' '.join(['.venv/bin/python', 'scripts/reliability_report.py', *source.split()])}`.",
    ]
    if run is not None:
        lines += [
            "",
            f"It ran `{run.command}` ({run.seconds:.0f} s):",
            "",
        ]
        for path, counts in sorted(run.counts.items()):
            summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
            lines.append(f"- `{path}`: {summary}")
        if run.failures:
            lines += ["", "**Failed:**", ""] + [f"- `{name}`" for name in run.failures]
    lines += [
        "",
        "## Scenarios",
        "",
        "*how often*: what the proxy injected, counted (and the SendMessageBatch calls it saw). "
        "*runs*: each run of the campaign in order. *queued / failed / pending*: the recipients "
        "after the last run. *duplicates*: extra copies in the queue, against what the "
        "scenario allows (lost replies, or the crash window for kills and dropped connections). "
        "*replies lost*: entries SQS stored whose answer never reached the client. *FIFO "
        "resends dropped*: entries SQS acknowledged as duplicates of an earlier send.",
        "",
        *(table(faults) if faults else ["No scenario recorded anything."]),
        "",
        "## Secrets and tokens",
        "",
        "Distinctive values planted where an operator puts secrets (AWS keys, the database "
        "password, the HTTP API's tokens), then searched for after runs that succeed, fail and "
        "are refused: a row is written only when none was found. Phone numbers are searched "
        "for the same way (only the messages may hold them).",
        "",
        *(exposure_table(sweeps) if sweeps else ["No sweep recorded anything."]),
        "",
        *rewrap(NOT_GUARANTEED.format(**settings)),
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenarios (or read a log) and write the report; 1 if a test failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-log", type=Path, help="read this log instead of running tests")
    parser.add_argument("--keep-log", type=Path, help="also keep the log the tests wrote here")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="report to write")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    args = parser.parse_args(argv)
    if args.from_log:
        rows = read_log(args.from_log)
        write_report(rows, None, f"--from-log {args.from_log}", args.output)
        sys.stdout.write(f"{args.output}: {len(rows)} scenarios from {args.from_log}\n")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        log, junit = Path(scratch) / "reliability.jsonl", Path(scratch) / "junit.xml"
        run = run_tests(log, junit, args.pytest_args)
        rows = read_log(log)
        if args.keep_log:
            args.keep_log.write_text(log.read_text() if log.exists() else "", encoding="utf-8")
    extra = " ".join(["--", *args.pytest_args]) if args.pytest_args else ""
    write_report(rows, run, extra, args.output)
    sys.stdout.write(f"{args.output}: {len(rows)} scenarios; failed: {run.failures or 'none'}\n")
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
