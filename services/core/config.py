"""Configuration: one TOML file plus environment overrides, parsed once into typed specs.

Each component declares its section as a frozen dataclass with named-constant defaults and
calls `parse(spec_class, raw_section, "section.path")`. Every value is checked against the
field's type; an unknown key, a wrong type or a failed `validate()` stops start-up with a
`ConfigError` naming the full key (`cache.pools.default.servers[1]: ...`).

Environment overrides: `GLAMMP__SERVER__PORT=9099` sets `[server] port = 9099`. The value is
read as a TOML literal when it is one (`9099`, `true`, `["a", "b"]`) and as a string
otherwise. Units live in field names: `_ms` is milliseconds, `_bytes` bytes.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

ENV_PREFIX = "GLAMMP__"


class ConfigError(Exception):
    """A configuration value is wrong; `key` is the full dotted path, `reason` says why."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"config {key}: {reason}")
        self.key = key
        self.reason = reason


def load(path: str | None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Reads the TOML file at `path` (none: empty) and applies `GLAMMP__…` overrides."""
    raw: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as e:
            raise ConfigError(path, f"cannot read: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(path, f"not valid TOML: {e}") from None
    env = os.environ if environ is None else environ
    for name, text in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts), f"{name} overrides a value that is not a table")
            node = child
        node[parts[-1]] = _literal(text)
    return raw


def _literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse(spec: type[T], raw: Any, key: str) -> T:
    """Builds the dataclass `spec` from the table `raw` (None: all defaults)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(key, f"expected a table, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(spec)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(spec)
    for name in raw:
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(_join(key, name), f"unknown key (known: {known})")
    values = {name: _convert(hints[name], raw[name], _join(key, name)) for name in raw}
    try:
        obj = spec(**values)
    except TypeError as e:
        raise ConfigError(key, str(e)) from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as e:
            raise ConfigError(key, str(e)) from None
    return obj


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, key)
        raise ConfigError(key, f"unsupported type {hint}")
    if dataclasses.is_dataclass(hint):
        return parse(hint, value, key)  # type: ignore[arg-type]
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {type(value).__name__}")
        item = args[0] if args else Any
        items = [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {type(value).__name__}")
        return {k: _convert(args[1], v, _join(key, k)) for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(key, "expected an integer, got a boolean")
    if not isinstance(value, hint):
        raise ConfigError(key, f"expected {hint.__name__}, got {type(value).__name__}")
    return value
