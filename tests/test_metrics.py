import math

import numpy as np
import pytest

from dfd_ray.metrics import METRIC_KEYS, coc_metrics, depth_metrics, mean_metrics


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
