"""Hypothesis strategies that generate valid events from their Avro schema and model together."""

from __future__ import annotations

import base64
import json
import typing
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel

from tidings.schemas import default_schemas

TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"), min_size=1, max_size=16
)
JSON_OBJECT = st.dictionaries(
    TEXT, st.one_of(st.integers(-(10**6), 10**6), TEXT, st.booleans(), st.none()), max_size=4
).map(lambda d: json.dumps(d, ensure_ascii=False))
TIMESTAMP = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
SCHEDULED = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2026, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
"""A `scheduled_at` may be at most 400 days ahead of when its event is made."""
HHMM = st.from_regex(r"\A([01]\d|2[0-3]):[0-5]\d\Z")


def _literal(annotation: Any) -> tuple[Any, ...] | None:
    for arg in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(arg) is typing.Literal:
            return typing.get_args(arg)
        inner = _literal(arg) if typing.get_args(arg) and arg is not annotation else None
        if inner:
            return inner
    return None


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        if typing.get_args(arg) and arg is not annotation and (found := _model_of(arg)):
            return found
    return None


def for_type(avro: Any, name: str, annotation: Any) -> st.SearchStrategy[Any]:
    if isinstance(avro, list):
        branches = [for_type(t, name, annotation) for t in avro if t != "null"]
        return st.one_of(st.none(), *branches) if "null" in avro else st.one_of(*branches)
    if isinstance(avro, dict):
        logical, kind = avro.get("logicalType"), avro["type"]
        if logical == "uuid":
            return st.uuids()
        if logical == "timestamp-millis":
            return SCHEDULED if name == "scheduled_at" else TIMESTAMP
        if kind == "array":
            return st.lists(for_type(avro["items"], name, _item(annotation)), min_size=_min(name), max_size=3)
        if kind == "map" and name == "recipient_overrides":
            return st.fixed_dictionaries(
                {}, optional={"email": st.emails(), "sms": for_type("string", "phone", str)}
            )
        if kind == "map":
            return st.dictionaries(TEXT, for_type(avro["values"], name, _item(annotation)), max_size=3)
        if kind == "record":
            return for_record(avro, _model_of(annotation))
        return for_type(kind, name, annotation)
    if avro == "string":
        if values := _literal(annotation):
            return st.sampled_from(values)
        if name.endswith("_json"):
            return JSON_OBJECT
        if name in ("start", "end"):
            return HHMM
        if name == "phone":
            return st.sampled_from(["+4915112345678", "+14155550123", "+447911123456", "+81312345678"])
        if name == "email":
            return st.emails()
        if name == "timezone":
            return st.sampled_from(["Europe/Vienna", "America/New_York", "Asia/Kolkata", "UTC"])
        if name == "locale":
            return st.from_regex(r"\A[a-z]{2}(-[A-Z]{2})?\Z")
        if name == "url":
            return st.from_regex(r"\Ahttps://[a-z]{1,12}\.example/[a-z0-9]{0,12}\Z")
        if name == "secret":
            return st.binary(min_size=24, max_size=32).map(lambda b: "whsec_" + base64.b64encode(b).decode())
        return TEXT
    return {
        "int": st.integers(1, 2**31 - 1),
        "long": st.integers(1, 2**62),
        "boolean": st.booleans(),
        "double": st.floats(allow_nan=False),
        "float": st.floats(allow_nan=False, width=32),
    }[avro]


def _min(name: str) -> int:
    """Arrays the model requires non-empty."""
    return 1 if name == "recipient_ids" else 0


def _item(annotation: Any) -> Any:
    for arg in (annotation, *typing.get_args(annotation)):
        origin = typing.get_origin(arg)
        if origin in (list, dict):
            return typing.get_args(arg)[-1]
    return None


def for_record(schema: dict[str, Any], model: type[BaseModel] | None) -> st.SearchStrategy[dict[str, Any]]:
    fields = {}
    for f in schema["fields"]:
        annotation = model.model_fields[f["name"]].annotation if model else None
        fields[f["name"]] = for_type(f["type"], f["name"], annotation)
    return st.fixed_dictionaries(fields)


def event_dicts(name: str, model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    return for_record(default_schemas().current(name).raw, model)
