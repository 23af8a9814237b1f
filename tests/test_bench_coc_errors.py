"""The CoC-error diagnosis job: its tables by hand, and its teacher mode against the teacher."""

import numpy as np
import pytest

from dfd_ray import focalstack, synth, teachers
from dfd_ray.config import load_config
from tests.job_scripts import load_job


@pytest.fixture(scope="module")
def job():
    return load_job("bench_coc_errors")


def test_the_table_bins_shares_biases_and_weighted_errors(job):
    key = np.array([0.2, 0.4, 1.5, 3.0])
    error = np.array([1.0, -0.5, 0.25, 2.0])
    weight = np.array([1.0, 0.0, 1.0, 1.0])
    rows = job.table("GT CoC", " px", key, (0.0, 0.5, 2.0, np.inf), error, weight).splitlines()
    assert rows[2] == "| 0–0.5 px | 0.500 | 0.750 | +0.250 | 1.000 | 0.500 |"  # the second pixel weighs 0
    assert rows[3] == "| 0.5–2 px | 0.250 | 0.250 | +0.250 | 0.250 | 1.000 |"
    assert rows[-1] == "| all | 1.000 | 0.938 | +0.688 | 1.083 | 0.750 |"
    assert "weighted" not in job.table("GT CoC", " px", key, (0.0, np.inf), error).splitlines()[0]


def test_teacher_mode_scores_the_teachers_coc_through_the_lens(job, tmp_path):
    synth.run(load_config(synth.SynthConfig, [f"out={tmp_path}", "n_scenes=0", "n_test=2", "height=32",
                                              "width=32", "seed=3"]))
    prefix = focalstack.split_prefix(str(tmp_path), "test")
    cols = job.coc_errors(job.teacher_cocs(""), prefix, max_stacks=1)
    assert cols["scale"] is None
    stack = next(iter(focalstack.read_stacks(prefix)))
    depth, conf, source = teachers.teacher_maps(stack)
    assert source == "stack"
    valid = stack.depth > 0
    expected = np.concatenate([(stack.lens.coc_px(depth, float(s)) - stack.lens.coc_px(stack.depth, float(s)))[valid]
                               for s in stack.focus_distances])
    np.testing.assert_allclose(cols["error"], expected, atol=1e-5)
    n = len(stack.focus_distances)
    np.testing.assert_allclose(cols["weight"], np.tile(conf[valid], n))
    np.testing.assert_array_equal(cols["border"], np.tile(job.border_distance(32, 32)[valid], n))
    np.testing.assert_array_equal(cols["depth_edge"], np.tile(job.depth_edge_distance(stack.depth)[valid], n))


def test_teacher_mode_prints_the_error_by_the_teachers_own_confidence(job, tmp_path, monkeypatch, capsys):
    synth.run(load_config(synth.SynthConfig, [f"out={tmp_path}", "n_scenes=0", "n_test=1", "height=32",
                                              "width=32", "seed=3"]))
    monkeypatch.setattr("sys.argv", ["bench_coc_errors.py", "--data", str(tmp_path), "--teacher"])
    job.main()
    tables = capsys.readouterr().out.split("\n\n")
    by_conf = next(t for t in tables if t.startswith("| teacher confidence |")).splitlines()
    cols = job.coc_errors(job.teacher_cocs(""), focalstack.split_prefix(str(tmp_path), "test"))
    assert by_conf == job.table("teacher confidence", "", cols["weight"], job.CONFIDENCE_BINS, cols["error"],
                                cols["weight"]).splitlines()
    # Every pixel falls in a bin: its "all" row is the other tables'.
    assert by_conf[-1] == tables[0].splitlines()[-1]


def test_border_distance_counts_pixels_to_the_nearest_edge(job):
    expected = np.array([[0, 0, 0, 0, 0],
                         [0, 1, 1, 1, 0],
                         [0, 1, 2, 1, 0],
                         [0, 1, 1, 1, 0],
                         [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(job.border_distance(5, 5), expected)
    assert job.border_distance(2, 7).max() == 0 and job.border_distance(4, 6)[1:3, 1:5].min() == 1


def test_depth_edge_distance_measures_from_both_sides_of_a_jump_and_ignores_a_slant(job):
    depth = np.full((6, 8), 1.0)
    depth[:, 5:] = 2.0  # an occlusion between columns 4 and 5
    dist = job.depth_edge_distance(depth)
    np.testing.assert_array_equal(dist[0], [4, 3, 2, 1, 0, 0, 1, 2])
    assert np.all(dist == dist[0])  # the same on every row: chessboard distance to a vertical edge
    slant = np.exp(np.linspace(0.0, 0.1, 48)).reshape(6, 8)  # at most 0.017 in log depth a step: no edge
    assert np.all(job.depth_edge_distance(slant) == job.EDGE_CAP_PX)
    assert np.all(job.depth_edge_distance(slant, cap_px=5) == 5)
    holed = np.ones((6, 8))
    holed[2:4, 2:4] = 0.0  # pixels without GT depth border no edge
    assert np.all(job.depth_edge_distance(holed) == job.EDGE_CAP_PX)


def test_prior_mode_predicts_each_slices_median_training_coc(job, tmp_path):
    synth.run(load_config(synth.SynthConfig, [f"out={tmp_path}", "n_scenes=2", "n_test=1", "height=32",
                                              "width=32", "seed=4"]))
    train = list(focalstack.read_stacks(focalstack.split_prefix(str(tmp_path), "train")))
    depths = np.concatenate([st.depth[st.depth > 0] for st in train])  # 2 × 32² pixels: all of them are the sample
    test = next(iter(focalstack.read_stacks(focalstack.split_prefix(str(tmp_path), "test"))))
    cocs, weight, scale = job.prior_cocs(focalstack.split_prefix(str(tmp_path), "train"))(test)
    assert weight is None and scale is None and cocs.shape == (len(test.focus_distances), 32, 32)
    for k, s in enumerate(test.focus_distances):
        np.testing.assert_allclose(cocs[k], np.median(test.lens.coc_px(depths, float(s))), rtol=1e-6)
    assert np.ptp(cocs.reshape(len(cocs), -1).mean(1)) > 0  # a different constant per focus distance


def test_prior_mode_refuses_a_dataset_without_a_train_split(job, tmp_path, monkeypatch):
    synth.run(load_config(synth.SynthConfig, [f"out={tmp_path}", "n_scenes=0", "n_test=1", "height=32",
                                              "width=32", "seed=4"]))
    monkeypatch.setattr("sys.argv", ["bench_coc_errors.py", "--data", str(tmp_path), "--prior"])
    with pytest.raises(SystemExit, match="no train split"):
        job.main()


def test_model_mode_scores_the_error_scale_the_model_predicts(job, tmp_path):
    import torch

    from dfd_ray.models.nets import DFDModel, ModelConfig

    synth.run(load_config(synth.SynthConfig, [f"out={tmp_path}", "n_scenes=0", "n_test=1", "height=32",
                                              "width=32", "seed=5"]))
    prefix = focalstack.split_prefix(str(tmp_path), "test")
    torch.manual_seed(0)
    model = DFDModel(ModelConfig(widths=(4, 8), side_widths=(4,), depth_bins=8)).eval()
    cols = job.coc_errors(job.model_cocs(model), prefix)
    error, gt_coc, weight, scale = cols["error"], cols["gt_coc"], cols["weight"], cols["scale"]
    stack = next(iter(focalstack.read_stacks(prefix)))
    with torch.no_grad():
        out = model(torch.from_numpy(stack.images_float()).permute(0, 3, 1, 2),
                    torch.from_numpy(stack.focus_distances.astype(np.float32)), stack.lens)
    valid = stack.depth > 0
    np.testing.assert_allclose(scale, np.concatenate([b[valid] for b in out["coc_scale"].numpy()]))
    np.testing.assert_allclose(error + gt_coc, np.concatenate([c[valid] for c in out["coc"].numpy()]), atol=1e-5)
    assert np.all(weight == 1)
