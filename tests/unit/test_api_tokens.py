"""The HTTP API's tokens: where they come from, which are refused, how one is named."""

import hashlib
from pathlib import Path

import pytest

from campaign_pipeline.api import tokens as api_tokens
from campaign_pipeline.api.tokens import tokens_from_environment
from campaign_pipeline.errors import TokenError

OPERATOR = "operator-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"


def sha256_line(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def test_tokens_come_from_both_variables_and_files_with_their_scopes(tmp_path: Path) -> None:
    operators = tmp_path / "operators"
    operators.write_text(f"# operators\n\n{sha256_line('file-operator-token-42')}\n")
    readers = tmp_path / "readers"
    readers.write_text(f"{READER}\n")
    ring = tokens_from_environment(
        {
            "CAMPAIGN_API_TOKENS": f" {OPERATOR} , ,second-operator-token-1",
            "CAMPAIGN_API_TOKENS_FILE": str(operators),
            "CAMPAIGN_API_READ_TOKENS_FILE": str(readers),
        }
    )
    assert len(ring) == 4
    first, second = ring.identify(OPERATOR), ring.identify("second-operator-token-1")
    assert first and first.label == "#1" and first.may_operate
    assert second and second.label == "#2"
    from_file = ring.identify("file-operator-token-42")
    digest = hashlib.sha256(b"file-operator-token-42").hexdigest()
    assert from_file and from_file.label == f"sha256:{digest[:8]}" and from_file.may_operate
    reader = ring.identify(READER)
    assert reader and reader.label == "#4" and not reader.may_operate


@pytest.mark.parametrize(
    "presented",
    ["", OPERATOR[:-1], OPERATOR + "x", OPERATOR.upper(), " " + OPERATOR, sha256_line(OPERATOR)],
)
def test_anything_but_the_exact_token_is_unknown(presented: str) -> None:
    ring = tokens_from_environment({"CAMPAIGN_API_TOKENS": OPERATOR})
    assert ring.identify(presented) is None


def test_every_digest_is_compared_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the time taken does not say how far down the list a token is."""
    ring = tokens_from_environment(
        {"CAMPAIGN_API_TOKENS": ",".join(f"token-number-{i:04d}-abcdef" for i in range(5))}
    )
    compared: list[bytes] = []
    real = api_tokens.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(api_tokens.hmac, "compare_digest", counting)
    for presented in ("token-number-0000-abcdef", "token-number-0004-abcdef", "nope-" * 4):
        compared.clear()
        ring.identify(presented)
        assert len(compared) == 5


@pytest.mark.parametrize(
    ("environ", "fragments"),
    [
        ({}, ["no API token is configured", "CAMPAIGN_API_TOKENS"]),
        ({"CAMPAIGN_API_TOKENS": " , "}, ["no API token is configured"]),
        ({"CAMPAIGN_API_TOKENS": "short"}, ["CAMPAIGN_API_TOKENS entry 1", "at least 16"]),
        (
            {"CAMPAIGN_API_TOKENS": f"{OPERATOR},has space in it 0123456"},
            ["CAMPAIGN_API_TOKENS entry 2", "only letters"],
        ),
        ({"CAMPAIGN_API_READ_TOKENS": "sha256:abc"}, ["CAMPAIGN_API_READ_TOKENS entry 1", "64"]),
        ({"CAMPAIGN_API_TOKENS_FILE": "/nonexistent/tokens"}, ["cannot read", "No such file"]),
    ],
)
def test_bad_configuration_is_one_line_without_the_token(
    environ: dict[str, str], fragments: list[str]
) -> None:
    with pytest.raises(TokenError) as raised:
        tokens_from_environment(environ)
    message = str(raised.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    assert "has space" not in message and "'short'" not in message


def test_a_bad_line_in_a_file_is_named_by_its_number(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{OPERATOR}\n# a comment\nsha256:{'0' * 63}\n")
    with pytest.raises(TokenError, match=rf"{path} line 3: a sha256: line needs 64"):
        tokens_from_environment({"CAMPAIGN_API_TOKENS_FILE": str(path)})
