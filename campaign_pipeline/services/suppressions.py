"""Suppressing numbers for an organization: what `suppress` and the HTTP API both do.

Input is checked before anything is written, all or nothing: one malformed number refuses the
whole request, naming its position and why (the number itself masked). An import file reads as
a CSV with a `phone_number` column, or as one number per line; its bad lines are reported by
line number and the good ones added.
"""

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from campaign_pipeline.errors import InvalidSuppression, SuppressionFileError
from campaign_pipeline.phone_numbers import phone_number_problems
from campaign_pipeline.privacy import mask_phone_numbers
from campaign_pipeline.store.suppressions import SCOPES, Added, Suppressions
from campaign_pipeline.text import one_line

# An organization id as the campaigns table holds one: up to 36 visible characters.
ORGANIZATION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,36}$")
MAX_REASON_CHARS = 500
# Bytes of an import file read at most: 100,000 numbers with room for a CSV's other columns.
MAX_IMPORT_BYTES = 64 * 1024 * 1024
PHONE_COLUMN = "phone_number"


@dataclass(frozen=True)
class RejectedLine:
    """A line of an import file that holds no valid number."""

    line: int
    reason: str


@dataclass
class ImportResult:
    """What `import_file` did."""

    added: int = 0
    present: int = 0
    rejected: list[RejectedLine] = field(default_factory=list)


def check_organization_id(text: str) -> str:
    """The organization id, or `InvalidSuppression` saying what is wrong with it."""
    if not ORGANIZATION_ID.match(text):
        raise InvalidSuppression(
            f"organization id {text[:40]!r} is not usable: expected up to 36 letters, digits "
            "or _ . : -"
        )
    return text


def check_scope(scope: str) -> str:
    """`marketing` or `all`, or `InvalidSuppression`."""
    if scope not in SCOPES:
        raise InvalidSuppression(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    return scope


def check_reason(reason: str | None) -> str | None:
    """The reason as one line of at most `MAX_REASON_CHARS`, numbers in it masked."""
    if reason is None or not reason.strip():
        return None
    line = mask_phone_numbers(one_line(reason))
    if len(line) > MAX_REASON_CHARS:
        raise InvalidSuppression(f"the reason is over {MAX_REASON_CHARS} characters")
    return line


def check_phone_numbers(numbers: Sequence[str]) -> list[str]:
    """The numbers, each valid E.164; else `InvalidSuppression` naming the first bad one."""
    if not numbers:
        raise InvalidSuppression("give at least one phone number")
    for position, problem in enumerate(phone_number_problems(numbers), start=1):
        if problem is not None:
            # Whatever was typed, only its last two characters are repeated.
            shown = "***" + (numbers[position - 1] or "")[-2:]
            raise InvalidSuppression(
                f"phone number {position} ({shown}) is not E.164: {problem}; nothing was changed"
            )
    return list(numbers)


def suppress(
    suppressions: Suppressions,
    organization_id: str,
    numbers: Sequence[str],
    scope: str,
    reason: str | None,
    source: str,
) -> Added:
    """Check everything, then add the numbers in one transaction."""
    organization_id = check_organization_id(organization_id)
    checked = check_phone_numbers(numbers)
    return suppressions.add(
        organization_id, checked, check_scope(scope), check_reason(reason), source
    )


def unsuppress(suppressions: Suppressions, organization_id: str, numbers: Sequence[str]) -> int:
    """Check everything, then take the numbers off the list; returns how many were on it."""
    organization_id = check_organization_id(organization_id)
    return suppressions.remove(organization_id, check_phone_numbers(numbers))


def read_numbers(path: Path) -> tuple[list[tuple[int, str]], list[RejectedLine]]:
    """An import file's numbers by line number, and its lines that hold no valid number.

    A first line naming a `phone_number` column makes the file a CSV (other columns are
    ignored); otherwise each line is one number. Blank lines are skipped.

    Raises:
        SuppressionFileError: the file cannot be read, is too large or is not UTF-8 text.
    """
    try:
        size = path.stat().st_size
        if size > MAX_IMPORT_BYTES:
            raise SuppressionFileError(
                f"{path} is {size:,} bytes, over the {MAX_IMPORT_BYTES:,} an import reads"
            )
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SuppressionFileError(f"{path} is not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise SuppressionFileError(f"cannot read {path}: {error.strerror or error}") from None
    lines = text.splitlines()
    header = next(csv.reader([lines[0]])) if lines else []
    entries: list[tuple[int, str | None]] = []
    if PHONE_COLUMN in (cell.strip() for cell in header):
        column = [cell.strip() for cell in header].index(PHONE_COLUMN)
        reader = csv.reader(io.StringIO(text))
        next(reader)
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            entries.append((line, row[column].strip() if column < len(row) else None))
    else:
        for line, content in enumerate(lines, start=1):
            if content.strip():
                entries.append((line, content.strip()))
    problems = phone_number_problems([number for _, number in entries])
    numbers = [
        (line, number)
        for (line, number), problem in zip(entries, problems, strict=True)
        if problem is None and number is not None
    ]
    rejected = [
        RejectedLine(line, problem)
        for (line, _), problem in zip(entries, problems, strict=True)
        if problem is not None
    ]
    return numbers, rejected


def import_file(
    suppressions: Suppressions,
    organization_id: str,
    path: Path,
    scope: str,
    reason: str | None,
    source: str,
) -> ImportResult:
    """Add every valid number of the file; report the rest by line number."""
    organization_id = check_organization_id(organization_id)
    scope, reason = check_scope(scope), check_reason(reason)
    numbers, rejected = read_numbers(path)
    result = ImportResult(rejected=rejected)
    if numbers:
        added = suppressions.add(
            organization_id, [number for _, number in numbers], scope, reason, source
        )
        result.added, result.present = added.added, added.present
        # A number twice in the file is added once and counted present the second time.
        result.present += len(numbers) - len({number for _, number in numbers})
    return result
