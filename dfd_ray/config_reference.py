"""docs/configuration.md, generated from the config dataclasses.

    python -m dfd_ray.config_reference            # print the markdown
    python -m dfd_ray.config_reference --write    # replace the reference in docs/configuration.md

Each field's description is the `# comment` on its line in the dataclass source, so the
reference says what the code says; a test fails when docs/configuration.md is not what this prints.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import io
import re
import sys
import tokenize
from pathlib import Path

from omegaconf import MISSING

from dfd_ray.cli import COMMANDS, IMPORTERS

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"
DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def _own_comments(cls: type) -> dict[str, str]:
    """Field name → its `# comment` in `cls`'s own source, with comment-only lines right below
    it joined on (a comment that goes on over several lines)."""
    comments: dict[str, str] = {}
    source = inspect.getsource(cls)
    pending, last = None, None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and pending is None:
            pending, last = tok.string, None
        elif tok.type == tokenize.COMMENT and pending:
            comments[pending] = tok.string.lstrip("# ").strip()
        elif tok.type == tokenize.COMMENT and last in comments and tok.start[1] == 4:
            comments[last] += " " + tok.string.lstrip("# ").strip()
        elif tok.type == tokenize.NL and pending is None and last is not None and last not in comments:
            last = None
        if tok.type == tokenize.NEWLINE:
            last, pending = pending, None
    return comments


def _field_comments(cls: type) -> dict[str, str]:
    """`_own_comments` over the class and its dataclass bases (the class's own win)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass) and klass is not object:
            comments.update(_own_comments(klass))
    return comments


def _shown(value: object) -> str:
    if value == MISSING:
        return "required"
    if dataclasses.is_dataclass(value):
        return "(section)"
    return f"`{value!r}`" if value not in ("", None) else ("`\"\"`" if value == "" else "`None`")


def _default(f: dataclasses.Field, section: object | None) -> object:
    """The value a run gets when it sets nothing: the section instance's where the field sits in a
    section (its parent's factory may set it), else the field's own default."""
    if section is not None:
        return getattr(section, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return MISSING


def rows(cls: type, prefix: str = "", section: object | None = None) -> list[tuple[str, str, object, str]]:
    """(key, type, default value, meaning) of every field of `cls`, sections walked."""
    comments = _field_comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        value = _default(f, section)
        kind = re.sub(r"\s+", " ", str(f.type))
        meaning = comments.get(f.name, "")
        if dataclasses.is_dataclass(value) and not meaning:
            meaning = f"see the rows `{prefix}{f.name}.*`"
        out.append((f"{prefix}{f.name}", kind, value, meaning))
        if dataclasses.is_dataclass(value):
            out.extend(rows(type(value), f"{prefix}{f.name}.", value))
    return out


def _rows(cls: type) -> list[str]:
    return [f"| `{key}` | {kind.replace('|', chr(92) + '|')} | {_shown(value)} | {meaning} |"
            for key, kind, value, meaning in rows(cls)]


def config_classes() -> dict[str, type]:
    """Command name → its config class."""
    commands = [(name, cmd) for name, cmd in COMMANDS.items()] + [(f"import {n}", c) for n, c in IMPORTERS.items()]
    return {name: getattr(importlib.import_module(cmd.module), cmd.config_class) for name, cmd in commands}


def reference() -> str:
    parts = [BEGIN, ""]
    for name, cls in config_classes().items():
        parts += [f"### `dfd-ray {name}` ({cls.__name__})", "",
                  "| key | type | default | meaning |", "|---|---|---|---|", *_rows(cls), ""]
    parts.append(END)
    return "\n".join(parts)


def replace_in(text: str) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"{DOC.name} lacks the {BEGIN} … {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + reference() + tail


def main(argv: list[str]) -> int:
    if "--write" in argv:
        DOC.write_text(replace_in(DOC.read_text()))
        return 0
    print(reference())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
