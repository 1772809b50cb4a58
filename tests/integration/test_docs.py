"""The documentation against the code: its commands, its links, and the README's newcomer path.

Every `campaign-pipeline` command in a fenced block of README.md and docs/*.md is parsed by the
real parser; every relative link and `#anchor` there must resolve; the README block marked
`<!-- tested: newcomer -->` runs as written, as one bash script, against moto's server and a
SQLite store in a temporary directory, and what its comments say a command prints is printed.
The test stands in for two of its lines: activating `.venv` (it puts its own interpreter's
directory first on PATH) and starting moto's server (it uses the session's, whose URL replaces
the block's). Touches subprocesses, moto and SQLite.
"""

import argparse
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from campaign_pipeline.cli import build_parser
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.store.schema import campaign_audience, campaigns
from tests.conftest import drain

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROG = "campaign-pipeline"
PLACEHOLDER_ID = "123e4567-e89b-12d3-a456-426614174001"
PLACEHOLDER = re.compile(r"\"?\$\{?CAMPAIGN_ID\}?\"?|\bCAMPAIGN_ID\b")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```$", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEREDOC = re.compile(r"<<-?\s*'?(\w+)'?")
SHELL_OPERATORS = re.compile(r"\|\||&&|[|;&]")
NEWCOMER_MARK = "<!-- tested: newcomer -->"
MOTO_URL = "http://127.0.0.1:5005"


def fenced_blocks(text: str) -> list[str]:
    return FENCE.findall(text)


def shell_lines(block: str) -> list[str]:
    """The block's logical lines: continuations joined, heredoc bodies and prompts dropped."""
    lines: list[str] = []
    heredoc_end: str | None = None
    pending = ""
    for raw in block.splitlines():
        if heredoc_end is not None:
            if raw.strip() == heredoc_end:
                heredoc_end = None
            continue
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if match := HEREDOC.search(line):
            heredoc_end = match.group(1)
        lines.append(line.removeprefix("$ "))
    return lines


def cli_commands(line: str) -> list[list[str]]:
    """The argument lists of every `campaign-pipeline` invocation on one shell line."""
    line = PLACEHOLDER.sub(PLACEHOLDER_ID, line)
    found = []
    for segment in SHELL_OPERATORS.split(line.split(" #", 1)[0]):
        try:
            words = shlex.split(segment, comments=True)
        except ValueError:  # an unbalanced quote in prose or output, not a command
            continue
        words = [w for w in words if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", w)]
        if words and Path(words[0]).name == PROG:
            found.append(words[1:])
    return found


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, arguments) of every `campaign-pipeline` command in the docs' fenced blocks."""
    commands = []
    for document in DOCUMENTS:
        for block in fenced_blocks(document.read_text()):
            for line in shell_lines(block):
                for arguments in cli_commands(line):
                    commands.append((f"{document.relative_to(ROOT)}: {line.strip()}", arguments))
    return commands


def parse(arguments: list[str]) -> argparse.Namespace:
    """The real parser's reading of `arguments`; argparse's complaint as an AssertionError."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            return build_parser().parse_args(arguments)
    except SystemExit as exit:
        if exit.code == 0:  # --help
            return argparse.Namespace()
        raise AssertionError(stderr.getvalue().strip()) from None


def test_every_documented_command_parses() -> None:
    """Each command shown in a fenced block exists, takes those options, and names a UUID."""
    commands = documented_commands()
    assert len(commands) > 20, commands
    problems = []
    for where, arguments in commands:
        try:
            namespace = parse(arguments)
            if campaign_id := getattr(namespace, "campaign_id", None):
                uuid.UUID(campaign_id)
        except (AssertionError, ValueError) as error:
            problems.append(f"{where}\n    {error}")
    assert not problems, "\n".join(problems)


def test_every_command_is_shown_and_listed() -> None:
    """Every subcommand appears in a fenced block and in operations.md's table of commands."""
    parser = build_parser()
    subparsers = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    names = set(subparsers.choices)
    shown = {arguments[0] for _, arguments in documented_commands() if arguments}
    assert names - shown == set(), "commands no fenced block shows"
    operations = (ROOT / "docs" / "operations.md").read_text()
    table = operations.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    listed = {
        name
        for row in table.splitlines()
        if row.startswith("| `")
        for name in re.findall(r"`([a-z-]+)`", row.split("|")[1])
    }
    assert listed == names


def test_a_documented_mistake_would_be_caught() -> None:
    """The checks above see an unknown command, an unknown option and a missing argument."""
    for line in (
        "campaign-pipeline launch CAMPAIGN_ID",
        'campaign-pipeline status "$CAMPAIGN_ID" --yaml',
        "campaign-pipeline schedule",
    ):
        (arguments,) = cli_commands(line)
        with pytest.raises(AssertionError):
            parse(arguments)


def anchors(document: Path) -> set[str]:
    """GitHub's anchors for the document's headings (fenced blocks skipped)."""
    text = FENCE.sub("", document.read_text())
    seen: dict[str, int] = {}
    result = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def test_every_relative_link_and_anchor_resolves() -> None:
    """Links between the docs (and into the repository) point at files and headings that exist."""
    problems = []
    checked = 0
    for document in DOCUMENTS:
        text = FENCE.sub("", document.read_text())
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            checked += 1
            path_text, _, anchor = target.partition("#")
            path = (document.parent / path_text).resolve() if path_text else document
            where = f"{document.relative_to(ROOT)}: ({target})"
            if not path.is_relative_to(ROOT):
                problems.append(f"{where} leaves the repository")
            elif not path.exists():
                problems.append(f"{where} does not exist")
            elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
                problems.append(f"{where} has no heading #{anchor}")
    assert checked > 30
    assert not problems, "\n".join(problems)


def newcomer_block() -> str:
    readme = (ROOT / "README.md").read_text()
    assert readme.count(NEWCOMER_MARK) == 1
    after = readme.split(NEWCOMER_MARK, 1)[1]
    match = FENCE.match(after.lstrip("\n"))
    assert match, "the newcomer mark must sit just above a fenced block"
    return match.group(1)


def test_the_readme_newcomer_path_runs_as_written(
    sqs_endpoint: str, sqs_client: object, tmp_path: Path
) -> None:
    """From a fresh directory: a store, a campaign previewed, paused, resumed, sent and shown."""
    block = newcomer_block()
    lines = block.splitlines()
    stand_ins = [line for line in lines if "moto.server" in line or "activate" in line]
    assert len(stand_ins) == 2, stand_ins
    assert MOTO_URL in block
    used = {arguments[0] for line in shell_lines(block) for arguments in cli_commands(line)}
    assert {"init-db", "preview", "pause", "resume", "process", "status"} <= used
    script = "\n".join(line for line in lines if line not in stand_ins)
    script = script.replace(MOTO_URL, sqs_endpoint)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CAMPAIGN_", "DAGSTER_", "SQS_")) and name != "AWS_SQS_QUEUE_URL"
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output and "telemetry" not in output.lower(), output
    assert (tmp_path / ".dagster" / "dagster.yaml").exists()
    store = CampaignStore(database_url=f"sqlite:///{tmp_path / 'campaigns.db'}")
    with store.engine.connect() as connection:
        (campaign,) = connection.execute(sa.select(campaigns)).mappings()
        recipients = list(
            connection.execute(
                sa.select(campaign_audience.c.id, campaign_audience.c.status)
            ).mappings()
        )
    store.engine.dispose()
    assert campaign["status"] == "ready_to_launch" and campaign["paused_by"], dict(campaign)
    assert campaign["pending_count"] == 0 and campaign["failed_count"] >= 1
    sent = {row["id"] for row in recipients if row["status"] == "ready_to_send"}
    assert sent and {row["status"] for row in recipients} == {"ready_to_send", "failed"}
    assert f"this run queued {len(sent)} and failed {campaign['failed_count']}" in result.stdout
    printed = re.findall(rf"^{PROG} .*?  +# (.+)$", block, re.MULTILINE)
    assert printed and all(text in result.stdout for text in printed), (printed, result.stdout)
    queue_url = sqs_client.get_queue_url(QueueName="whatsapp-messages.fifo")["QueueUrl"]
    bodies = [message["Body"] for message in drain(sqs_client, queue_url)]
    assert sorted(re.findall(r'"campaignAudienceId":"([^"]+)"', "".join(bodies))) == sorted(sent)
