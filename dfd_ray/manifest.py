"""Manifest files: one record per row, as CSV (a header row), JSON lines, a JSON array or Parquet.

`read_rows` is the one parser of the project's manifests (`dfd-ray infer`'s camera manifest and
the stacks importer's slice manifest); each caller checks the values of its own columns. Rows
are labelled as a user finds them in the file: "NAME line N" (CSV and JSON lines: the line of the
file), "NAME item I" (a JSON array), "NAME row I" (Parquet, from 1).
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from dfd_ray import storage

FORMATS = (".csv", ".jsonl", ".json", ".parquet")


class ManifestError(ValueError):
    """A manifest that cannot be read as a whole: its format, its encoding or its header."""


def read_rows(uri: str, columns: Sequence[str], required: Sequence[str] = ()) -> tuple[list[tuple[str, dict]], list[str]]:
    """([(where, record)], problems) of the manifest `uri`, whose records may hold `columns`.

    A CSV header that lacks a `required` column or names an unknown one, an unparsable file and an
    unknown format raise ManifestError (naming `uri`). Rows that cannot be taken (a bad JSON line, a
    record with unknown keys, a CSV row with extra fields) are left out and each is a problem,
    so that a caller can report every problem at once. CSV values are strings ('' = empty).
    """
    name = posixpath.basename(uri.rstrip("/"))
    ext = posixpath.splitext(name)[1].lower()
    if ext not in FORMATS:
        raise ManifestError(f"{uri}: a manifest must end in {', '.join(FORMATS)}, got {ext or 'no extension'}")
    data = storage.read_bytes(uri)
    known = list(columns)
    if ext == ".parquet":
        try:
            table = pq.read_table(io.BytesIO(data))
        except pa.ArrowException as exc:
            raise ManifestError(f"{uri}: not a readable Parquet file ({exc})") from None
        _check_header(uri, table.column_names, known, required)
        return [(f"{name} row {i}", r) for i, r in enumerate(table.to_pylist(), start=1)], []
    try:
        text = data.decode("utf-8-sig")  # -sig: spreadsheet exports often start with a BOM
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{uri}: not UTF-8 text ({exc})") from None
    if ext == ".csv":
        return _csv_rows(uri, name, text, known, required)
    return _json_rows(uri, name, text, known, ext)


def _check_header(uri: str, header: Sequence[str], known: list[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in header]
    unknown = [c for c in header if c not in known]
    if missing or unknown:
        detail = ([f"missing columns {missing}"] if missing else []) + ([f"unknown columns {unknown}"] if unknown else [])
        raise ManifestError(f"{uri} line 1: header has {' and '.join(detail)}; "
                            f"required {list(required)}, optional {[c for c in known if c not in required]}")


def _csv_rows(uri: str, name: str, text: str, known: list[str], required: Sequence[str]):
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    _check_header(uri, header, known, required)
    reader.fieldnames = header
    rows, problems = [], []
    for record in reader:
        where = f"{name} line {reader.line_num}"
        if None in record:
            problems.append(f"{where}: more fields than the header's {len(header)}")
        else:
            rows.append((where, record))
    return rows, problems


def _json_rows(uri: str, name: str, text: str, known: list[str], ext: str):
    problems: list[str] = []
    if ext == ".json" and text.lstrip().startswith("["):
        try:
            entries = [(f"{name} item {i}", item) for i, item in enumerate(json.loads(text))]
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{uri}: not valid JSON: {exc}") from None
    else:
        entries = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    entries.append((f"{name} line {lineno}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    problems.append(f"{name} line {lineno}: not valid JSON: {exc.msg}")
    rows = []
    for where, item in entries:
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a JSON object, got {type(item).__name__}")
        elif unknown := sorted(set(item) - set(known)):
            problems.append(f"{where}: unknown keys {unknown}; valid keys {known}")
        else:
            rows.append((where, item))
    return rows, problems
