import math

import numpy as np
import pytest

from dfd_ray.metrics import METRIC_KEYS, SIDE_KEYS, best_constant, coc_metrics, depth_metrics, mean_metrics, side_metrics


def test_hand_computed_values():
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])  # 0 is invalid
    pred = np.array([[1.1, 1.0], [4.0, 9.0]])
    m = depth_metrics(pred, gt)
    # valid pixels: (1.1 vs 1), (1 vs 2), (4 vs 4)
    assert m["abs_rel"] == pytest.approx((0.1 / 1 + 1.0 / 2 + 0) / 3)
    assert m["sq_rel"] == pytest.approx((0.01 / 1 + 1.0 / 2 + 0) / 3)
    assert m["mse"] == pytest.approx((0.01 + 1.0 + 0) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt((0.01 + 1.0) / 3))
    assert m["mae"] == pytest.approx((0.1 + 1.0) / 3)
    assert m["rmse_log"] == pytest.approx(math.sqrt((math.log(1.1) ** 2 + math.log(0.5) ** 2) / 3))
    # ratios 1.1, 2.0, 1.0: δ1 counts 1.1 and 1.0; δ2 (< 1.5625) the same; δ3 (< 1.953) the same
    assert (m["delta1"], m["delta2"], m["delta3"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert set(m) == set(METRIC_KEYS)


def test_clip_and_empty_and_average():
    gt = np.array([1.0, 2.0, 3.0])
    assert depth_metrics(np.array([1.0, 2.0, 0.0]), gt, max_depth=2.0)["abs_rel"] == 0.0
    empty = depth_metrics(np.ones(3), np.zeros(3))
    assert all(math.isnan(v) for v in empty.values())
    avg = mean_metrics([depth_metrics(np.array([2.0]), np.array([1.0])), empty, depth_metrics(np.array([1.0]), np.array([1.0]))])
    assert avg["abs_rel"] == pytest.approx(0.5) and avg["images"] == 2
    with pytest.raises(ValueError, match="differ in shape"):
        depth_metrics(np.ones(2), np.ones(3))


def test_coc_error_over_valid_depth_pixels():
    gt_depth = np.array([[0.5, 0.0], [2.0, 4.0]])  # 0 is invalid; 4 m is clipped below
    gt_coc = np.array([[1.0, 7.0], [3.0, 5.0]])
    pred = np.array([[1.5, 0.0], [2.0, 5.0]])
    m = coc_metrics(pred, gt_coc, gt_depth)
    assert m == pytest.approx({"coc_mae_px": (0.5 + 1.0 + 0.0) / 3, "gt_coc_mean_px": (1.0 + 3.0 + 5.0) / 3})
    assert coc_metrics(pred, gt_coc, gt_depth, max_depth=2.0) == pytest.approx(
        {"coc_mae_px": 0.75, "gt_coc_mean_px": 2.0})
    assert all(math.isnan(v) for v in coc_metrics(pred, gt_coc, np.zeros((2, 2))).values())
    with pytest.raises(ValueError, match="differ in shape"):
        coc_metrics(pred, gt_coc, np.ones(3))


def test_side_metrics_split_the_error_into_blur_and_side():
    # focus s = 0.5 m (1/s = 2), G = 10 px m: c = 10 |1/d - 2|. GT: 0.25 m (near side, c = 20 px),
    # 1 m (far side, 10 px), 0.5 m (in focus), 0 (invalid).
    gt = np.array([0.25, 1.0, 0.5, 0.0])
    pred_depth = np.array([0.25, 0.4, 0.6, 9.0])  # sides: near (right), near (wrong), far (GT has none)
    pred_coc = np.array([10.0, 10.0, 3.0, 0.0])
    m = side_metrics(pred_depth, pred_coc, gt, 0.5, 10.0, (0.1, 10.0))
    # GT side, predicted CoC: 1/(2 + 1) = 1/3 m (rel. error 1/3), 1/(2 - 1) = 1 m (0), 1/2 (0)
    # predicted side, GT CoC: 1/(2 + 2) = 0.25 m (0), 1/(2 + 1) = 1/3 m (2/3), 1/2 (0)
    # wrong side where GT CoC >= 1 px: 0.25 m right, 1 m wrong
    assert m == pytest.approx({"abs_rel_true_side": (1 / 3) / 3, "abs_rel_true_coc": (2 / 3) / 3, "wrong_side": 0.5})
    clipped = side_metrics(np.array([2.0]), np.array([30.0]), np.array([1.0]), 0.5, 10.0, (0.1, 10.0))
    assert clipped["abs_rel_true_side"] == pytest.approx(9.0)  # 1/s - 3 < 1/10 m: clipped to the far end
    near_only = side_metrics(pred_depth, pred_coc, gt, 0.5, 10.0, (0.1, 10.0), max_depth=0.9)
    assert near_only == pytest.approx({"abs_rel_true_side": (1 / 3) / 2, "abs_rel_true_coc": 0.0, "wrong_side": 0.0})
    in_focus = side_metrics(np.array([0.6]), np.array([0.0]), np.array([0.5]), 0.5, 10.0, (0.1, 10.0))
    assert math.isnan(in_focus["wrong_side"]) and in_focus["abs_rel_true_side"] == 0.0
    avg = mean_metrics([m, in_focus, side_metrics(pred_depth, pred_coc, np.zeros(4), 0.5, 10.0, (0.1, 10.0))], SIDE_KEYS)
    assert avg["images"] == 2 and avg["wrong_side"] == 0.5  # the in-focus image has no side to get wrong
    assert avg["abs_rel_true_side"] == pytest.approx((1 / 9) / 2)
    with pytest.raises(ValueError, match="differ in shape"):
        side_metrics(pred_depth, pred_coc[:2], gt, 0.5, 10.0, (0.1, 10.0))


def test_best_constant_minimises_mean_abs_rel():
    rng = np.random.default_rng(0)
    depths = [rng.uniform(0.1, 3.0, (7, 9)).astype(np.float32), np.array([[0.0, 0.5], [2.0, 9.0]], np.float32)]
    c, n = best_constant(depths, max_depth=3.0)
    valid = np.concatenate([depths[0].ravel(), [0.5, 2.0]]).astype(np.float64)  # 0 and 9 m are masked out
    assert n == valid.size
    grid = np.linspace(0.1, 3.0, 20001)
    brute = grid[np.argmin([np.mean(np.abs(valid - g) / valid) for g in grid])]
    assert np.mean(np.abs(valid - c) / valid) <= np.mean(np.abs(valid - brute) / valid) + 1e-12
    assert c in valid  # the weighted median is a sample
    with pytest.raises(ValueError, match="no valid GT pixel"):
        best_constant([np.zeros((2, 2), np.float32)])
