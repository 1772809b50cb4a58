"""The payload JSON Schema shipped with the package, as a validator for tests."""

import json
from functools import cache
from importlib.resources import files
from typing import Any

import polars as pl
from jsonschema import Draft202012Validator


@cache
def payload_validator() -> Draft202012Validator:
    """A validator for the payload JSON Schema shipped with the package."""
    resource = files("campaign_pipeline") / "schemas" / "payload.schema.json"
    schema = json.loads(resource.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def assert_valid_payloads(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Check every payload of `frame` against the JSON Schema and return them parsed."""
    assert frame["payload"].is_null().to_list() == frame["failure_reason"].is_not_null().to_list()
    parsed = [json.loads(payload) for payload in frame["payload"].drop_nulls()]
    for payload in parsed:
        payload_validator().validate(payload)
    return parsed
