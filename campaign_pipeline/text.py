"""Small text helpers shared by the command line, the API, the trigger, the SQS check, the ops."""

import uuid

import sqlalchemy as sa
from sqlalchemy.engine import make_url


def one_line(text: object) -> str:
    """`text` with every run of whitespace, newlines included, as one space."""
    return " ".join(str(text).split())


def canonical_campaign_id(raw: str) -> str:
    """The campaign id in canonical UUID form; raises ValueError naming it if it is not one."""
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ValueError(f"campaign id {raw!r} is not a UUID") from None


def display_database_url(url: str) -> str:
    """The database URL with any password replaced by `***`."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return "<unparsable database URL>"


def database_reason(error: Exception) -> str:
    """The driver's message for a database error, on one line, without SQLAlchemy's footer."""
    original = getattr(error, "orig", None)
    text = str(original if original is not None else error)
    return one_line(text.split("(Background on this error")[0])
