"""The HTTP API's Bearer tokens: where they come from, how one is checked, how it is named.

Operator tokens (every endpoint) come from `CAMPAIGN_API_TOKENS` (comma-separated) and
`CAMPAIGN_API_TOKENS_FILE` (one per line); read-only tokens (status, preview, sqs-status) from
`CAMPAIGN_API_READ_TOKENS` and `CAMPAIGN_API_READ_TOKENS_FILE`. A file's line may be
`sha256:<64 hex digits>`, the digest of the token, so the file holds no secret; blank lines and
lines starting with `#` are skipped.

Only digests are kept. A presented token is hashed and compared with every known digest in
constant time, so neither the answer's timing nor its content says which part was wrong. A token
is named in logs by its place (`#2`) or, for a `sha256:` line, by its digest's first 8 digits:
never by anything of the token itself.
"""

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from campaign_pipeline.errors import TokenError

Scope = Literal["operator", "read"]

SOURCES: tuple[tuple[str, str, Scope], ...] = (
    ("CAMPAIGN_API_TOKENS", "CAMPAIGN_API_TOKENS_FILE", "operator"),
    ("CAMPAIGN_API_READ_TOKENS", "CAMPAIGN_API_READ_TOKENS_FILE", "read"),
)
# Long enough that guessing is hopeless; `openssl rand -hex 32` gives 64.
MIN_TOKEN_LENGTH = 16
# What may follow `Bearer ` in a header (RFC 6750's b64token), so a token always fits one.
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
DIGEST_PATTERN = re.compile(r"sha256:([0-9a-fA-F]{64})")


@dataclass(frozen=True)
class ApiToken:
    """A known token: its SHA-256 digest, its name in logs and what it may do."""

    digest: bytes
    label: str
    scope: Scope

    @property
    def may_operate(self) -> bool:
        """Whether it may process, pause, resume and cancel."""
        return self.scope == "operator"


def token_digest(token: str) -> bytes:
    """The SHA-256 digest of a token, as a `sha256:` line stores it (in hex)."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class ApiTokens:
    """Every known token, checked in constant time."""

    tokens: tuple[ApiToken, ...]

    def __len__(self) -> int:
        return len(self.tokens)

    def identify(self, presented: str) -> ApiToken | None:
        """The known token `presented` is, or None; every digest is compared, match or not."""
        digest = token_digest(presented)
        found = None
        for token in self.tokens:
            if hmac.compare_digest(digest, token.digest):
                found = token
        return found


def _parse(entry: str, where: str, scope: Scope, place: int) -> ApiToken:
    if match := DIGEST_PATTERN.fullmatch(entry):
        hexdigest = match.group(1).lower()
        return ApiToken(bytes.fromhex(hexdigest), f"sha256:{hexdigest[:8]}", scope)
    if entry.startswith("sha256:"):
        raise TokenError(f"{where}: a sha256: line needs 64 hexadecimal digits")
    if not TOKEN_PATTERN.fullmatch(entry):
        raise TokenError(
            f"{where}: a token may hold only letters, digits and - . _ ~ + / (then = signs)"
        )
    if len(entry) < MIN_TOKEN_LENGTH:
        raise TokenError(
            f"{where}: a token needs at least {MIN_TOKEN_LENGTH} characters "
            "(`openssl rand -hex 32` makes one)"
        )
    return ApiToken(token_digest(entry), f"#{place}", scope)


def _file_entries(variable: str, path_text: str) -> list[tuple[str, str]]:
    path = Path(path_text)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise TokenError(f"{variable}: cannot read {path}: {reason}") from None
    return [
        (line.strip(), f"{path} line {number}")
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.strip().startswith("#")
    ]


def tokens_from_environment(environ: Mapping[str, str] | None = None) -> ApiTokens:
    """The tokens the environment names; raises `TokenError` for a bad one or for none at all."""
    environ = os.environ if environ is None else environ
    tokens: list[ApiToken] = []
    for variable, file_variable, scope in SOURCES:
        entries = [
            (entry.strip(), f"{variable} entry {number}")
            for number, entry in enumerate(environ.get(variable, "").split(","), start=1)
            if entry.strip()
        ]
        if path_text := environ.get(file_variable, "").strip():
            entries += _file_entries(file_variable, path_text)
        for entry, where in entries:
            tokens.append(_parse(entry, where, scope, len(tokens) + 1))
    if not tokens:
        raise TokenError(
            "no API token is configured: set CAMPAIGN_API_TOKENS (comma-separated) or "
            "CAMPAIGN_API_TOKENS_FILE (one token or sha256:<hex> per line)"
        )
    return ApiTokens(tuple(tokens))
