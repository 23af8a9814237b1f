import io

import numpy as np
import pytest
from PIL import Image

from dfd_ray import depth_codec
from dfd_ray.focalstack import DatasetError


def test_a_depth_png_round_trips_to_the_millimetre_and_keeps_invalid_pixels():
    depth = np.array([[0.1234, 2.5], [np.nan, -1.0]], np.float32)
    back = depth_codec.decode_depth(depth_codec.encode_depth_mm(depth), "d.png")
    np.testing.assert_allclose(back[0], [0.123, 2.5], atol=1e-6)
    assert back.dtype == np.float32 and (back[1] == 0).all()  # non-finite and negative: 0 = invalid


def test_npy_depth_in_metres_with_a_trailing_channel():
    buf = io.BytesIO()
    np.save(buf, np.full((3, 4, 1), 1.5, np.float64))
    back = depth_codec.decode_depth(buf.getvalue(), "d.npy")
    assert back.shape == (3, 4) and back.dtype == np.float32 and (back == 1.5).all()


def test_bad_depth_files_name_the_file_and_what_is_wrong():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, format="PNG")
    with pytest.raises(DatasetError, match="eight.png: depth PNG must be 16-bit grey"):
        depth_codec.decode_depth(buf.getvalue(), "eight.png")
    with pytest.raises(DatasetError, match="d.tif: depth files must be .png, .npy, .exr"):
        depth_codec.decode_depth(b"", "d.tif")
    with pytest.raises(DatasetError, match="junk.npy: not a readable .npy"):
        depth_codec.decode_depth(b"junk", "junk.npy")
