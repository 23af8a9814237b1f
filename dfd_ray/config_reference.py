"""The README's configuration reference, generated from the config dataclasses.

    python -m dfd_ray.config_reference            # print the markdown
    python -m dfd_ray.config_reference --write    # replace the section in README.md

Each field's description is the `# comment` on its line in the dataclass source, so the
reference says what the code says; a test fails when README.md is not what this prints.
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


def _field_comments(cls: type) -> dict[str, str]:
    comments: dict[str, str] = {}
    source = inspect.getsource(cls)
    pending = None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and pending is None:
            pending = tok.string
        elif tok.type == tokenize.COMMENT and pending:
            comments[pending] = tok.string.lstrip("# ").strip()
        if tok.type == tokenize.NEWLINE:
            pending = None
    return comments


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if value == MISSING:
        return "required"
    if dataclasses.is_dataclass(value):
        return "(section)"
    return f"`{value!r}`" if value not in ("", None) else ("`\"\"`" if value == "" else "`None`")


def _rows(cls: type, prefix: str = "") -> list[str]:
    comments = _field_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = _default(f)
        kind = re.sub(r"\s+", " ", str(f.type)).replace("|", "\\|")
        rows.append(f"| `{prefix}{f.name}` | {kind} | {default} | {comments.get(f.name, '')} |")
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(value):
            rows.extend(_rows(type(value), f"{prefix}{f.name}."))
    return rows


def reference() -> str:
    parts = [BEGIN, ""]
    commands = [(name, cmd) for name, cmd in COMMANDS.items()] + [(f"import {n}", c) for n, c in IMPORTERS.items()]
    for name, cmd in commands:
        cls = getattr(importlib.import_module(cmd.module), cmd.config_class)
        parts += [f"### `dfd-ray {name}` ({cmd.config_class})", "",
                  "| key | type | default | meaning |", "|---|---|---|---|", *_rows(cls), ""]
    parts.append(END)
    return "\n".join(parts)


def replace_in(text: str) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"README.md lacks the {BEGIN} … {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + reference() + tail


def main(argv: list[str]) -> int:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    if "--write" in argv:
        readme.write_text(replace_in(readme.read_text()))
        return 0
    print(reference())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
