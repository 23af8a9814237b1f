"""Datasets on a real S3 endpoint (moto's threaded server on 127.0.0.1, via AWS_ENDPOINT_URL)."""

import numpy as np

from dfd_ray import cli, storage
from dfd_ray.focalstack import read_stacks, validate


def test_synth_to_s3_reads_back_byte_identical(s3_bucket, tmp_path):
    args = ["n_scenes=3", "n_test=1", "height=24", "width=32", "seed=5", "shard_size=2"]
    assert cli.main(["synth", "--out", f"{s3_bucket}/ds", *args]) == 0
    assert cli.main(["synth", "--out", str(tmp_path), *args]) == 0

    remote = storage.list_files(f"{s3_bucket}/ds/train", "part-*.parquet")
    local = sorted((tmp_path / "train").glob("part-*.parquet"))
    assert [r.rsplit("/", 1)[1] for r in remote] == [p.name for p in local] == ["part-00000.parquet", "part-00001.parquet"]
    for r, p in zip(remote, local):
        assert storage.read_bytes(r) == p.read_bytes()
    assert storage.exists(f"{s3_bucket}/ds/config.yaml")

    for split in ("train", "test"):
        a = list(read_stacks(f"{s3_bucket}/ds/{split}"))
        b = list(read_stacks(str(tmp_path / split)))
        assert [s.scene_id for s in a] == [s.scene_id for s in b]
        for x, y in zip(a, b):
            assert np.array_equal(x.images, y.images) and np.array_equal(x.depth, y.depth)

    rows, problems = validate(f"{s3_bucket}/ds")
    assert (rows, problems) == (4, [])


def test_validate_on_s3_reports_problems(s3_bucket):
    storage.write_bytes(f"{s3_bucket}/bad/train/part-00000.parquet", b"garbage")
    rows, problems = validate(f"{s3_bucket}/bad")
    assert rows == 0 and len(problems) == 1 and "not a readable Parquet file" in problems[0].message


def test_eval_reads_its_model_and_data_from_s3_and_writes_its_metrics_there(s3_bucket, model_uri):
    import json
    import os

    from dfd_ray import evaluate, synth
    from dfd_ray.config import load_config

    synth.run(load_config(synth.SynthConfig, [f"out={s3_bucket}/ev", "n_scenes=0", "n_test=1", "height=32", "width=32"]))
    for name in os.listdir(model_uri):
        storage.write_bytes(f"{s3_bucket}/model/{name}", open(os.path.join(model_uri, name), "rb").read())
    evaluate.run(load_config(evaluate.EvalConfig, [f"model={s3_bucket}/model", f"data={s3_bucket}/ev",
                                                  f"out={s3_bucket}/eval"]))
    report = json.loads(storage.read_bytes(f"{s3_bucket}/eval/metrics.json"))
    assert report["single"]["overall"]["abs_rel"] > 0 and storage.exists(f"{s3_bucket}/eval/metrics.md")


def test_fit_reads_its_data_from_s3_and_writes_splats_and_records_there(ray_session, s3_bucket):
    import json

    from dfd_ray import fit_job, synth
    from dfd_ray.config import load_config
    from dfd_ray.splat import load_splats

    synth.run(load_config(synth.SynthConfig, [f"out={s3_bucket}/fd", "n_scenes=0", "n_test=1", "height=24", "width=24"]))
    out = f"{s3_bucket}/fit"
    summary = fit_job.run(load_config(fit_job.FitJobConfig, [f"data={s3_bucket}/fd", f"out={out}", "fit.steps=4",
                                                             "fit.warmup_steps=1", "task_cpus=0.5"]))
    (scene_id,) = [r["scene_id"] for r in json.loads(storage.read_bytes(f"{out}/fit_metrics.json"))["per_scene"]]
    assert summary["scenes"] == 1 and not summary["failed"]
    assert load_splats(fit_job.splat_uri(out, scene_id))[0].means.shape[0] == 24 * 24
    again = fit_job.run(load_config(fit_job.FitJobConfig, [f"data={s3_bucket}/fd", f"out={out}", "fit.steps=4"]))
    assert again["kept_from_earlier_run"] == 1  # the record and splats on S3 are found and trusted
