"""Handwriting plots: stroke breaks, PNG files, image batches."""

import matplotlib.image
import numpy as np
import pytest

from tfhier.plotting import handwriting_figure, handwriting_image_batch, save_handwriting_png, strokes_xy

# Points (0,0) (1,0) (2,0) | (2,1) (3,2) |  : pen-up after the 2nd and 4th steps.
STEPS = np.array([[1, 0, 0], [1, 0, 1], [0, 1, 0], [1, 1, 1]], dtype=np.float32)


def test_pen_up_breaks_the_line_after_the_point_it_reaches():
    xy = strokes_xy(STEPS, offset_scale=2.0)
    expected = np.array([[0, 0], [2, 0], [4, 0], [np.nan, np.nan], [4, 2], [6, 4], [np.nan, np.nan]])
    np.testing.assert_array_equal(xy, expected)


def test_figure_has_one_row_per_sequence():
    fig = handwriting_figure([STEPS, STEPS, STEPS], titles=["a", "b", "c"])
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["a", "b", "c"]
    with pytest.raises(ValueError):
        handwriting_figure([STEPS], titles=["a", "b"])


def test_png_written_atomically_and_readable(tmp_path):
    path = tmp_path / "plots" / "samples.png"
    for _ in range(2):  # the second call replaces the first file
        assert save_handwriting_png([STEPS, STEPS * [1, -1, 1]], path, offset_scale=3.0, titles=["x", "y"]) == path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].min() < 0.5                   # some ink
    assert [p.name for p in path.parent.iterdir()] == ["samples.png"]


def test_image_batch_shape_and_ink():
    images = handwriting_image_batch([STEPS, STEPS[:2]], offset_scale=1.0, width=320, height=96)
    assert images.shape == (2, 96, 320, 4) and images.dtype == np.uint8
    for image in images:
        assert image[..., :3].min() < 128 and image[..., :3].max() == 255
