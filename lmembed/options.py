"""Options declared once: dataclass fields with help text, turned into flags and YAML keys.

Every user-facing option of lmembed is a field of a dataclass (``EmbeddingSpec``,
``TrainConfig``, ``ServerConfig``, the command option classes in ``cli.py``),
declared with ``option(default, help, ...)``. From these declarations come:

* the command-line flags (``add_flags``): one per field, ``--max-length`` for
  ``max_length``; booleans get ``--x/--no-x``; lists take a comma list (or a
  repeated flag, with ``option(..., repeat=True)``); ``Literal`` types become
  ``choices``;
* the flat key space shared by flags, YAML files and sweeps (``flat_fields``):
  a nested dataclass field (``nested(LoraOptions, prefix="lora")``) contributes
  its fields as ``lora_r``, ``lora_alpha``...; ``prefix=""`` inlines them
  (``TrainConfig.embedding`` gives ``model``, ``prompt``...);
* the object itself from flat values (``build``), naming unknown keys.

Flags default to ``None`` so that only the options a user typed override a YAML
file or an adapter's saved spec.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterator
from dataclasses import Field, field, fields
from typing import Any, Literal


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field that is also a flag and a YAML key; ``help`` shows in ``--help``."""
    if isinstance(default, (list, dict)):
        factory = (lambda: list(default)) if isinstance(default, list) else (lambda: dict(default))
        return field(default_factory=factory, metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


def nested(cls: type, prefix: str, help: str = "") -> Any:
    """A sub-config field whose options appear flat, as ``<prefix>_<name>`` (or bare)."""
    return field(default_factory=cls, metadata={"nested": cls, "prefix": prefix, "help": help})


@dataclasses.dataclass(frozen=True)
class FlatField:
    """One option as users see it: its flat name, where it lives, its type and help."""

    name: str
    path: tuple[str, ...]
    field: Field
    kind: Any

    @property
    def default(self) -> Any:
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return self.field.default

    @property
    def choices(self) -> tuple[Any, ...] | None:
        return literal_choices(self.kind)

    @property
    def help(self) -> str:
        return self.field.metadata.get("help", "")


def flat_fields(cls: type, prefix: str = "", path: tuple[str, ...] = ()) -> Iterator[FlatField]:
    """Every option of ``cls``, nested sub-configs flattened, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if not f.init:
            continue
        sub = f.metadata.get("nested")
        if sub is not None:
            inner = "_".join(p for p in (prefix, f.metadata["prefix"]) if p)
            yield from flat_fields(sub, inner, (*path, f.name))
            continue
        name = f"{prefix}_{f.name}" if prefix else f.name
        yield FlatField(name, (*path, f.name), f, hints[f.name])


def literal_choices(kind: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal[...]`` (or ``Literal[...] | None``) type."""
    for arg in _non_none(kind):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return None


def check_choices(obj: Any) -> None:
    """Raise ``ValueError`` when a ``Literal`` field of ``obj`` holds another value."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        choices = literal_choices(hints[f.name])
        value = getattr(obj, f.name)
        if choices and value not in choices and value is not None:
            raise ValueError(f"{f.name} must be one of {choices}, got {value!r}")


def build(cls: type, values: dict[str, Any], source: str = "options", base: Any = None) -> Any:
    """``cls`` from flat option values (on top of ``base`` or the defaults).

    Keys may use ``-`` or ``_``; a nested sub-config may also be given as a mapping
    under its field name (``lora: {r: 16}``). Unknown keys raise ``ValueError``
    naming them, ``source`` and the valid names.
    """
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    for f in fields(cls):
        if f.metadata.get("nested") is not None and isinstance(values.get(f.name), dict):
            prefix = "_".join(p for p in (f.metadata["prefix"],) if p)
            for key, value in values.pop(f.name).items():
                values[f"{prefix}_{key}" if prefix else key] = value
    known = {flat.name: flat for flat in flat_fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(
            f"{source}: unknown option(s) {', '.join(unknown)}; valid options: "
            f"{', '.join(sorted(known))}"
        )
    tree = to_tree(base) if base is not None else {}
    for name, value in values.items():
        node = tree
        *parents, leaf = known[name].path
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return from_tree(cls, tree)


def to_tree(obj: Any) -> dict[str, Any]:
    """Nested dict of an options object (what ``dataclasses.asdict`` gives)."""
    return dataclasses.asdict(obj)


def from_tree(cls: type, tree: dict[str, Any]) -> Any:
    """Inverse of ``to_tree``: nested dicts become nested option objects."""
    kwargs = {}
    for f in fields(cls):
        if f.name not in tree:
            continue
        sub = f.metadata.get("nested")
        value = tree[f.name]
        nest = sub is not None and isinstance(value, dict)
        kwargs[f.name] = from_tree(sub, value) if nest else value
    return cls(**kwargs)


def flat_dict(obj: Any) -> dict[str, Any]:
    """An options object as flat ``{name: value}`` (the YAML/flag key space)."""
    out = {}
    for flat in flat_fields(type(obj)):
        value = obj
        for part in flat.path:
            value = getattr(value, part)
        out[flat.name] = value
    return out


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    skip: tuple[str, ...] = (),
    group: str | None = None,
) -> list[str]:
    """Add one flag per option of ``cls`` (default ``None``); returns the flat names added.

    ``option(..., required=True)`` makes a flag required; ``option(..., flag="api-key")``
    names the flag differently from the field (a repeated flag read into a list).
    """
    target = parser.add_argument_group(group) if group else parser
    added = []
    for flat in flat_fields(cls):
        if flat.name in skip:
            continue
        flag = "--" + flat.field.metadata.get("flag", flat.name).replace("_", "-")
        help_text = f"{flat.help} (default: {flat.default!r})" if flat.help else None
        options: dict[str, Any] = {"default": None, "help": help_text, "dest": flat.name}
        if flat.field.metadata.get("required"):
            options["required"] = True
        base = _non_none(flat.kind)
        if flat.field.metadata.get("repeat"):
            inner = typing.get_args(base[0])[0]
            target.add_argument(flag, type=inner, action="append", **options)
        elif base == [bool]:
            target.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        elif typing.get_origin(base[0]) in (list, tuple):
            inner = typing.get_args(base[0])[0]
            target.add_argument(flag, type=_comma_list(inner), metavar="A,B,...", **options)
        else:
            choices = flat.choices
            value_type = type(choices[0]) if choices else base[0]
            target.add_argument(flag, type=value_type, choices=choices, **options)
        added.append(flat.name)
    return added


def given(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The flags among ``names`` that the user actually typed (not ``None``)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _comma_list(inner: type):
    def parse(text: str) -> list[Any]:
        return [inner(part.strip()) for part in text.split(",") if part.strip()]

    parse.__name__ = f"list of {getattr(inner, '__name__', inner)}"
    return parse


def _non_none(kind: Any) -> list[Any]:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(kind) if a is not type(None)]
    return [kind]
