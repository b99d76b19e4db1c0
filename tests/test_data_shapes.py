"""The procedural shapes dataset: deterministic, balanced, varied."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from pruning_core.data.shapes import SHAPE_CLASSES, _shape_sdf, generate_shapes
from pruning_core.errors import UserError


def test_shapes_dtypes_and_shapes() -> None:
    x, y = generate_shapes(50, seed=0)
    assert x.shape == (50, 3, 32, 32)
    assert x.dtype == torch.uint8
    assert y.shape == (50,)
    assert y.dtype == torch.int64
    assert int(y.min()) >= 0 and int(y.max()) < len(SHAPE_CLASSES)


def test_shapes_classes_are_ten_distinct_names() -> None:
    assert len(SHAPE_CLASSES) == 10
    assert len(set(SHAPE_CLASSES)) == 10


def test_shapes_deterministic_for_same_seed() -> None:
    a = generate_shapes(300, seed=7)
    b = generate_shapes(300, seed=7)
    assert torch.equal(a[0], b[0])
    assert torch.equal(a[1], b[1])


def test_shapes_differ_across_seeds() -> None:
    xa, ya = generate_shapes(300, seed=0)
    xb, yb = generate_shapes(300, seed=1)
    assert not torch.equal(xa, xb)
    assert not torch.equal(ya, yb)


def test_shapes_balanced_classes() -> None:
    _, y = generate_shapes(1003, seed=3)
    counts = torch.bincount(y, minlength=10)
    assert int(counts.min()) == 100 and int(counts.max()) == 101
    # Shuffled, not blocks or a plain cycle.
    assert not torch.equal(y[:10], torch.arange(10))


def test_shapes_images_vary() -> None:
    x, y = generate_shapes(200, seed=0)
    flat = x.reshape(len(x), -1)
    assert len(torch.unique(flat, dim=0)) == len(x)
    # Within one image there is a visible shape, not a flat fill.
    assert bool((flat.float().std(dim=1) > 5).all())
    # Same class, different images: position/size/colour change between instances.
    same = x[y == 0].float()
    assert float((same[0] - same[1]).abs().mean()) > 10


def test_shapes_silhouettes_are_distinct() -> None:
    """Each class has a non-empty silhouette unlike the others (circle/hexagon is closest)."""
    g = np.linspace(-1.2, 1.2, 96, dtype=np.float32)
    v, u = np.meshgrid(g, g, indexing="ij")
    masks = [
        _shape_sdf(c, u[None], v[None], np.array([0.5]))[0] < 0 for c in range(len(SHAPE_CLASSES))
    ]
    for c, m in enumerate(masks):
        assert 0.05 < m.mean() < 0.9, SHAPE_CLASSES[c]
    for a in range(len(masks)):
        for b in range(a + 1, len(masks)):
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.92, (SHAPE_CLASSES[a], SHAPE_CLASSES[b], float(iou))


def test_shapes_golden_hash() -> None:
    """Pixel-exact regression guard: change this only on purpose (it changes the dataset)."""
    x, y = generate_shapes(64, seed=0)
    digest = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()
    assert digest == GOLDEN


def test_shapes_zero_and_negative() -> None:
    x, y = generate_shapes(0, seed=0)
    assert x.shape == (0, 3, 32, 32) and y.shape == (0,)
    with pytest.raises(UserError):
        generate_shapes(-1, seed=0)
    with pytest.raises(UserError):
        generate_shapes(10, seed=-1)


GOLDEN = "8dfbc85faaf1d2e3672ce8fc3d4c7eafb3b8e22cb9b5a6e4f45e4e5707cb7cee"
