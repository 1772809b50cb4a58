"""What `suppress` and the API accept: numbers, organization ids, reasons, import files."""

from pathlib import Path

import pytest

from campaign_pipeline.errors import InvalidSuppression, SuppressionFileError
from campaign_pipeline.phone_numbers import phone_number_problems
from campaign_pipeline.services.suppressions import (
    MAX_REASON_CHARS,
    RejectedLine,
    check_organization_id,
    check_phone_numbers,
    check_reason,
    read_numbers,
)


def test_phone_number_problems_are_the_payloads_words() -> None:
    assert phone_number_problems(["+14155550123", "14155550123", "+0155550123", "", None]) == [
        None,
        "phone number must start with '+' (E.164)",
        "phone number must not start with 0 after '+'",
        "phone number is missing",
        "phone number is missing",
    ]


def test_a_bad_number_is_named_by_position_and_masked() -> None:
    with pytest.raises(InvalidSuppression) as raised:
        check_phone_numbers(["+14155550123", "+1415555012x3"])
    assert str(raised.value) == (
        "phone number 2 (***x3) is not E.164: phone number may contain only the digits 0-9 "
        "after '+'; nothing was changed"
    )
    with pytest.raises(InvalidSuppression, match="at least one"):
        check_phone_numbers([])


@pytest.mark.parametrize("organization_id", ["org 1", "", "x" * 37, "org\n1", "ö"])
def test_an_unusable_organization_id_is_refused(organization_id: str) -> None:
    with pytest.raises(InvalidSuppression, match="is not usable"):
        check_organization_id(organization_id)


def test_a_reason_is_one_line_its_numbers_masked_and_bounded() -> None:
    assert check_reason("  ") is None
    assert check_reason("wrote STOP\nfrom +14155550123") == "wrote STOP from ***23"
    with pytest.raises(InvalidSuppression, match="over 500 characters"):
        check_reason("x" * (MAX_REASON_CHARS + 1))


def test_a_csv_is_read_by_its_phone_number_column_lines_counted_from_the_header(
    tmp_path: Path,
) -> None:
    path = tmp_path / "optouts.csv"
    path.write_text(
        '\ufeffname,"phone_number"\n'
        '"Lee, Ann",+14155550123\n'
        '"two\nlines",+14155550124\n'  # a quoted newline: the record ends on line 4
        "short\n"  # no phone_number cell
        ",\n"  # blank cells: skipped
        "Bo,4155550125\n",
        encoding="utf-8",
    )
    numbers, rejected = read_numbers(path)
    assert numbers == [(2, "+14155550123"), (4, "+14155550124")]
    assert rejected == [
        RejectedLine(5, "phone number is missing"),
        RejectedLine(7, "phone number must start with '+' (E.164)"),
    ]


def test_a_file_without_the_column_is_one_number_per_line(tmp_path: Path) -> None:
    path = tmp_path / "numbers.txt"
    path.write_text("+14155550123\n\n  +14155550124  \nphone\n")
    numbers, rejected = read_numbers(path)
    assert numbers == [(1, "+14155550123"), (3, "+14155550124")]
    assert rejected == [RejectedLine(4, "phone number must start with '+' (E.164)")]


def test_an_unreadable_file_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(SuppressionFileError, match="cannot read"):
        read_numbers(tmp_path / "missing.csv")
    with pytest.raises(SuppressionFileError, match="cannot read"):
        read_numbers(tmp_path)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("phone_number\n+14155550123 é\n".encode("latin-1"))
    with pytest.raises(SuppressionFileError, match="is not UTF-8 text"):
        read_numbers(latin)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert read_numbers(empty) == ([], [])
