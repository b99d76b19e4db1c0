"""The three figures the Prune page redraws on every slider move (built from plain dicts in one
plotly constructor call): what they draw, titled axes included."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pruning_core.plots import histogram_figure, layer_sparsity_figure, mask_figure


def test_layer_sparsity_bars_follow_the_layers_and_grey_the_dense_ones() -> None:
    df = pd.DataFrame(
        {
            "layer": ["conv1", "conv2", "fc"],
            "sparsity": [0.5, 0.25, 0.0],
            "params": [100, 2000, 30],
            "pruned": [True, True, False],
        }
    )
    fig = layer_sparsity_figure(df, "Sparsity per layer (preview)")
    (bar,) = fig.data
    assert list(bar.x) == ["conv1", "conv2", "fc"]
    assert list(bar.y) == [0.5, 0.25, 0.0]
    colors = list(bar.marker.color)
    assert colors[0] == colors[1] != colors[2]
    assert [c[1] for c in bar.customdata] == ["pruned", "pruned", "kept dense"]
    assert fig.layout.title.text == "Sparsity per layer (preview)"
    assert fig.layout.yaxis.title.text == "weights removed"
    assert tuple(fig.layout.yaxis.range) == (0, 1)
    # Without `params`/`pruned` every bar is a pruned one.
    plain = layer_sparsity_figure(df[["layer", "sparsity"]])
    assert len(set(plain.data[0].marker.color)) == 1


def test_histogram_overlays_each_series_at_its_bin_centres() -> None:
    left = np.array([-1.0, 0.0, 0.5])
    right = np.array([0.0, 0.5, 2.0])
    df = pd.DataFrame(
        {
            "series": ["before"] * 3 + ["after"] * 3,
            "left": np.r_[left, left],
            "right": np.r_[right, right],
            "count": [5, 7, 9, 5, 0, 9],
        }
    )
    fig = histogram_figure(df, "conv1", "weight value", log_y=True)
    assert [t.name for t in fig.data] == ["before", "after"]
    for t in fig.data:
        assert np.allclose(t.x, (left + right) / 2)
        assert np.allclose(t.width, right - left)
    assert list(fig.data[1].y) == [5, 0, 9]
    assert fig.layout.barmode == "overlay"
    assert fig.layout.xaxis.title.text == "weight value"
    assert fig.layout.yaxis.title.text == "count" and fig.layout.yaxis.type == "log"
    assert histogram_figure(df).layout.yaxis.type == "linear"


def test_mask_picture_keeps_the_grid_and_its_labels() -> None:
    grid = pd.DataFrame([[1.0, 0.0], [0.5, 1.0]], index=[0, 4], columns=[0, 9])
    fig = mask_figure(grid, "conv1: mask")
    (hm,) = fig.data
    assert np.array_equal(np.asarray(hm.z), grid.to_numpy())
    assert list(hm.y) == [0, 4] and list(hm.x) == [0, 9]
    assert (hm.zmin, hm.zmax) == (0, 1)
    assert fig.layout.yaxis.autorange == "reversed"
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text == "output channel"
    assert fig.layout.title.text == "conv1: mask"
