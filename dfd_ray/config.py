"""Typed configuration: dataclass defaults ← optional YAML file ← `key=value` overrides.

Each command defines its config as a dataclass (next to the code it configures). `load_config`
merges the layers with OmegaConf in struct mode and returns an instance of the dataclass, so
`__post_init__` checks (choices, ranges) run before any work starts. Errors name the key and
what would have been valid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from dfd_ray import storage

T = TypeVar("T")

CONFIG_FILENAME = "config.yaml"


class ConfigError(ValueError):
    """A configuration value or key that cannot be used."""


def require_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"config key '{key}': {value!r} is not valid; valid choices: {list(choices)}")


def require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


def _valid_keys(schema: type, dotted: str) -> list[str]:
    """The keys valid at the parent of `dotted` in the dataclass tree."""
    node: Any = schema
    for part in dotted.split(".")[:-1]:
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            break
        node = fields[part].type if isinstance(fields[part].type, type) else fields[part].default_factory
    return sorted(f.name for f in dataclasses.fields(node)) if dataclasses.is_dataclass(node) else []


def _parse_overrides(overrides: Sequence[str]) -> list[str]:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not of the form key=value")
    return list(overrides)


def load_config(schema: type[T], overrides: Sequence[str] = (), yaml_uri: str | None = None) -> T:
    """Build a `schema` instance from its defaults, a YAML file and `key=value` overrides."""
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, True)
    layers = []
    if yaml_uri:
        try:
            layers.append(OmegaConf.create(storage.read_bytes(yaml_uri).decode()))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {yaml_uri} does not exist") from exc
    layers.append(OmegaConf.from_dotlist(_parse_overrides(overrides)))
    try:
        merged = OmegaConf.merge(base, *layers)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ConfigKeyError as exc:
        key = exc.full_key or str(exc.key)
        raise ConfigError(
            f"unknown config key '{key}'; valid keys here: {_valid_keys(schema, key)}"
        ) from None
    except MissingMandatoryValue as exc:
        raise ConfigError(f"config key '{exc.full_key}' is required (pass {exc.full_key}=...)") from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        first_line = str(exc).splitlines()[0]
        raise ConfigError(f"config key '{key}': {first_line}") from None


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Any, out_uri: str) -> str:
    """Write the resolved config as `out_uri/config.yaml`; returns its URI."""
    uri = storage.join(out_uri, CONFIG_FILENAME)
    storage.write_bytes(uri, to_yaml(cfg).encode())
    return uri
