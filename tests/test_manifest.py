"""The one manifest parser: four formats, rows labelled as a user finds them, every bad row named."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dfd_ray.manifest import ManifestError, read_rows

COLUMNS = ("path", "focus_distance", "note")


def test_the_four_formats_give_the_same_records_with_their_places(tmp_path):
    records = [{"path": "a.png", "focus_distance": 0.5}, {"path": "b.png", "focus_distance": 1.5}]
    (tmp_path / "m.csv").write_text("\ufeffpath,focus_distance\na.png,0.5\n\nb.png,1.5\n")  # a BOM, a blank line
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (tmp_path / "m.json").write_text(json.dumps(records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "m.parquet")
    got = {name: read_rows(str(tmp_path / name), COLUMNS, required=("path",)) for name in
           ("m.csv", "m.jsonl", "m.json", "m.parquet")}
    assert [w for w, _ in got["m.csv"][0]] == ["m.csv line 2", "m.csv line 4"]
    assert [w for w, _ in got["m.jsonl"][0]] == ["m.jsonl line 1", "m.jsonl line 2"]
    assert [w for w, _ in got["m.json"][0]] == ["m.json item 0", "m.json item 1"]
    assert [w for w, _ in got["m.parquet"][0]] == ["m.parquet row 1", "m.parquet row 2"]
    for name, (rows, problems) in got.items():
        assert problems == [] and [float(r["focus_distance"]) for _, r in rows] == [0.5, 1.5], name
        assert [r["path"] for _, r in rows] == ["a.png", "b.png"], name


def test_bad_rows_are_problems_and_a_bad_whole_is_an_error(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"path": "a.png"}\nnot json\n[1]\n{"path": "b.png", "focs": 1}\n')
    rows, problems = read_rows(str(tmp_path / "m.jsonl"), COLUMNS)
    assert [r["path"] for _, r in rows] == ["a.png"]
    assert [p.split(":")[0] for p in problems] == ["m.jsonl line 2", "m.jsonl line 3", "m.jsonl line 4"]
    assert "unknown keys ['focs']" in problems[2]
    (tmp_path / "m.csv").write_text("path,focs\na.png,1,extra\n")
    with pytest.raises(ManifestError, match=r"m.csv line 1: header has missing columns \['focus_distance'\] "
                                            r"and unknown columns \['focs'\]"):
        read_rows(str(tmp_path / "m.csv"), COLUMNS, required=("path", "focus_distance"))
    (tmp_path / "x.csv").write_text("path\na.png,1\n")
    assert read_rows(str(tmp_path / "x.csv"), COLUMNS)[1] == ["x.csv line 2: more fields than the header's 1"]
    (tmp_path / "m.txt").write_text("path\n")
    with pytest.raises(ManifestError, match=r"m.txt: a manifest must end in .csv, .jsonl, .json, .parquet, got .txt"):
        read_rows(str(tmp_path / "m.txt"), COLUMNS)
    (tmp_path / "m.json").write_text("[{")
    with pytest.raises(ManifestError, match="m.json: not valid JSON"):
        read_rows(str(tmp_path / "m.json"), COLUMNS)
