"""JSON round-trips for the frozen configuration dataclasses saved with every run."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, TypeVar

from busi.errors import ParameterError

Config = TypeVar("Config")


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(cls: type[Config], values: dict[str, Any]) -> Config:
    """Build ``cls`` from a dict, refusing unknown keys; missing keys take their defaults.

    JSON has no tuples, so list values become tuples where the field is a tuple.
    """
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ParameterError(f"Unknown {cls.__name__} setting(s): {', '.join(unknown)}. Allowed: {', '.join(sorted(names))}.")
    hints = typing.get_type_hints(cls)
    converted = {
        key: tuple(value) if isinstance(value, list) and typing.get_origin(hints[key]) is tuple else value
        for key, value in values.items()
    }
    return cls(**converted)


def config_to_json(config: Any) -> str:
    return json.dumps(config_to_dict(config), indent=2, sort_keys=True)


def config_from_json(cls: type[Config], text: str) -> Config:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ParameterError(f"{cls.__name__} JSON is malformed ({error}).") from error
    if not isinstance(values, dict):
        raise ParameterError(f"{cls.__name__} JSON must be an object of settings.")
    return config_from_dict(cls, values)
