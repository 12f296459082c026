"""Per-band image sheets: layout, white holes in the input panel, the hole's outline."""

import numpy as np

from isnet_jax.evaluators import sheets


def test_outline_is_the_hole_rim_only():
    mask = np.ones((8, 8, 1), np.float32)
    mask[2:6, 3:7] = 0.0  # a 4x4 hole
    rim = sheets.hole_outline(mask)
    expected = np.zeros((8, 8), bool)
    expected[2:6, 3:7] = True
    expected[3:5, 4:6] = False  # the hole's interior has no known neighbour
    np.testing.assert_array_equal(rim, expected)
    assert not sheets.hole_outline(np.ones((8, 8, 1))).any()


def test_sheet_rows_are_masked_input_result_ground_truth():
    rng = np.random.default_rng(0)
    image = rng.random((2, 6, 5, 3)).astype(np.float32) * 0.5
    result = rng.random((2, 6, 5, 3)).astype(np.float32) * 0.5
    mask = np.ones((2, 6, 5, 1), np.float32)
    mask[0, 0, 0] = 0.0
    sheet = sheets.image_sheet(image, mask, result)
    g = sheets.GUTTER
    assert sheet.shape == (2 * 6 + g, 3 * 5 + 2 * g, 3) and sheet.dtype == np.uint8
    as_uint8 = lambda x: (x * 255 + 0.5).astype(np.uint8)  # noqa: E731
    outline = as_uint8(np.array(sheets.OUTLINE))
    # Row 2 (no hole): the three panels as given.
    row = sheet[6 + g :]
    np.testing.assert_array_equal(row[:, :5], as_uint8(image[1]))
    np.testing.assert_array_equal(row[:, 5 + g : 10 + g], as_uint8(result[1]))
    np.testing.assert_array_equal(row[:, 10 + 2 * g :], as_uint8(image[1]))
    # Row 1: the one-pixel hole is its own rim, outlined in every panel.
    for x in (0, 5 + g, 10 + 2 * g):
        np.testing.assert_array_equal(sheet[0, x], outline)
    np.testing.assert_array_equal(sheet[6:6 + g], 255)  # white gutter between rows


def test_hole_interior_is_white_in_the_input_and_kept_in_result_and_truth():
    image = np.full((1, 7, 7, 3), 0.25, np.float32)
    result = np.full((1, 7, 7, 3), 0.5, np.float32)
    mask = np.ones((1, 7, 7, 1), np.float32)
    mask[0, 2:5, 2:5] = 0.0
    sheet = sheets.image_sheet(image, mask, result)
    g = sheets.GUTTER
    centre = [sheet[3, 3 + x] for x in (0, 7 + g, 14 + 2 * g)]
    np.testing.assert_array_equal(centre, [[255] * 3, [128] * 3, [64] * 3])
