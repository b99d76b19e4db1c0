"""Procedural "shapes" dataset: 10 classes of 32x32 RGB images, generated deterministically.

Every image is drawn from per-image parameters that come from ``numpy.random.default_rng(seed)``
alone, so the same ``(n, seed)`` gives bit-identical tensors on any machine. To keep that promise
the pixel maths is plain IEEE arithmetic (``+ - * / sqrt``, min/max, clip), which is exactly
rounded everywhere. The only transcendental calls (``cos``/``sin`` of each image's rotation) run on
a handful of parameters and are snapped to a 2**-20 grid, so a last-bit difference between libm
builds cannot reach the pixels.

Shapes are drawn with analytic anti-aliasing: each class has a signed distance function (SDF) in
shape-local coordinates, and pixel coverage is ``clip(0.5 - distance_in_pixels, 0, 1)``. That gives
the same soft edges as supersampling at a quarter of the cost.

Difficulty comes from random size, aspect jitter, position (shapes may poke out of the frame),
rotation, colours (about 10% of images are low contrast), a background gradient, Gaussian noise,
up to three distractor strokes/blobs and an occasional occluding rectangle. Some pairs are
genuinely confusable at small sizes (circle/hexagon, ellipse/diamond), so a small CNN lands below
100%.
"""

from __future__ import annotations

import numpy as np
import torch

from pruning_core.errors import UserError

__all__ = ["IMAGE_SIZE", "SHAPE_CLASSES", "generate_shapes"]

SHAPE_CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "star",
    "ring",
    "hexagon",
    "diamond",
    "ellipse",
    "arrow",
)

IMAGE_SIZE = 32
_CHUNK = 2048  # images rendered at once: keeps the float32 work arrays around 25 MB
_MAX_DISTRACTORS = 3

_F = np.float32
_Array = np.ndarray


def _snap(x: _Array) -> _Array:
    """Round to a 2**-20 grid so libm last-bit differences in cos/sin cannot change pixels."""
    return np.round(x * 2.0**20) / 2.0**20


def _half_planes(deg: list[float], offset: float) -> list[tuple[float, float, float]]:
    """Edges of a regular polygon as (nx, ny, offset) with outward unit normals at ``deg``."""
    normals = _snap(np.stack([np.cos(np.radians(deg)), np.sin(np.radians(deg))], axis=1))
    return [(float(nx), float(ny), offset) for nx, ny in normals]


# Constant polygon edges, computed once and snapped for the same reason as the rotations.
_TRIANGLE = _half_planes([90.0, 210.0, 330.0], 0.55)
_HEXAGON = _half_planes([0.0, 60.0, 120.0, 180.0, 240.0, 300.0], 0.82)
_STAR_K1 = (0.809016994375, -0.587785252292)  # (cos 36deg, -sin 36deg): star fold direction


def _convex(u: _Array, v: _Array, edges: list[tuple[float, float, float]]) -> _Array:
    """Approximate SDF of a convex polygon: the largest signed distance to any edge line."""
    d = u * _F(edges[0][0]) + v * _F(edges[0][1]) - _F(edges[0][2])
    for nx, ny, off in edges[1:]:
        np.maximum(d, u * _F(nx) + v * _F(ny) - _F(off), out=d)
    return d


def _box(u: _Array, v: _Array, half_w: float, half_h: float) -> _Array:
    return np.maximum(np.abs(u) - _F(half_w), np.abs(v) - _F(half_h))


def _star(u: _Array, v: _Array, inner: _Array, radius: float = 1.0) -> _Array:
    """Five-pointed star SDF by symmetry folding (after Inigo Quilez's sdStar5), no atan2.

    ``inner`` (broadcastable to ``u``) sets how deep the notches between the points are.
    """
    k1x, k1y = _F(_STAR_K1[0]), _F(_STAR_K1[1])
    k2x, k2y = -k1x, k1y
    x = np.abs(u)
    y = -v  # the reference is written for y-up coordinates
    t = _F(2.0) * np.maximum(k1x * x + k1y * y, _F(0.0))
    x, y = x - t * k1x, y - t * k1y
    t = _F(2.0) * np.maximum(k2x * x + k2y * y, _F(0.0))
    x, y = x - t * k2x, y - t * k2y
    x = np.abs(x)
    y = y - _F(radius)
    bax, bay = inner * -k1y, inner * k1x - _F(1.0)
    h = np.clip((x * bax + y * bay) / (bax * bax + bay * bay), _F(0.0), _F(radius))
    dx, dy = x - bax * h, y - bay * h
    dist = np.sqrt(dx * dx + dy * dy)
    return np.where(y * bax - x * bay < 0, -dist, dist)


_ARROW_HEAD = [
    (-1.0, 0.0, -0.05),  # base of the head at u = 0.05
    (0.5547002, 0.8320503, 0.5547002),  # upper slant through the tip (1, 0)
    (0.5547002, -0.8320503, 0.5547002),  # lower slant
]


def _shape_sdf(cls: int, u: _Array, v: _Array, extra: _Array) -> _Array:
    """SDF in shape-local units (the shape fits roughly in the unit disc).

    ``extra`` is a per-image parameter in [0, 1) used for a within-class variation
    (ring thickness, ellipse and diamond aspect, star inner radius, arm widths).
    """
    e = extra[:, None, None].astype(_F)
    name = SHAPE_CLASSES[cls]
    if name == "circle":
        return np.sqrt(u * u + v * v) - _F(0.9)
    if name == "square":
        return _box(u, v, 0.75, 0.75)
    if name == "triangle":
        return _convex(u, v, _TRIANGLE)
    if name == "cross":
        w = _F(0.22) + _F(0.12) * e
        return np.minimum(
            np.maximum(np.abs(u) - _F(0.95), np.abs(v) - w),
            np.maximum(np.abs(u) - w, np.abs(v) - _F(0.95)),
        )
    if name == "star":
        return _star(u, v, _F(0.38) + _F(0.17) * e)
    if name == "ring":
        thickness = _F(0.14) + _F(0.12) * e
        return np.abs(np.sqrt(u * u + v * v) - _F(0.72)) - thickness
    if name == "hexagon":
        return _convex(u, v, _HEXAGON)
    if name == "diamond":
        a = _F(0.5) + _F(0.15) * e  # half-width; the half-height is 1
        return (np.abs(u) + np.abs(v) * a - a) / np.sqrt(_F(1.0) + a * a)
    if name == "ellipse":
        a = _F(0.45) + _F(0.15) * e  # minor/major axis ratio
        k = np.sqrt(u * u + (v * v) / (a * a))
        return (k - _F(0.95)) * a
    if name == "arrow":
        shaft = np.maximum(np.maximum(-u - _F(0.95), u - _F(0.1)), np.abs(v) - _F(0.2))
        return np.minimum(shaft, _convex(u, v, _ARROW_HEAD))
    raise AssertionError(f"unknown shape class {cls}")


def _draw_params(n: int, seed: int) -> dict[str, _Array]:
    """All per-image random parameters, drawn up front in a fixed order."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n, dtype=np.int64) % len(SHAPE_CLASSES))
    p: dict[str, _Array] = {"labels": labels}
    p["scale"] = rng.uniform(7.5, 13.0, n)
    p["aspect"] = rng.uniform(0.9, 1.1, (n, 2))
    margin = p["scale"] * 0.75
    p["cx"] = margin + rng.uniform(0, 1, n) * (IMAGE_SIZE - 2 * margin)
    p["cy"] = margin + rng.uniform(0, 1, n) * (IMAGE_SIZE - 2 * margin)
    angle = rng.uniform(0, 2 * np.pi, n)
    p["cos"], p["sin"] = _snap(np.cos(angle)), _snap(np.sin(angle))
    p["extra"] = rng.uniform(0, 1, n)

    bg = rng.uniform(0, 1, (n, 3))
    # High contrast: shift each channel by 0.25..0.75 around the colour wheel, so every channel
    # differs by at least 0.25. Low contrast: a small nudge towards mid-grey.
    wheel = np.mod(bg + rng.uniform(0.25, 0.75, (n, 3)), 1.0)
    nudge = rng.uniform(0.10, 0.20, (n, 1)) * np.where(bg < 0.5, 1.0, -1.0)
    low = rng.uniform(0, 1, n) < 0.10
    p["bg"] = bg
    p["fg"] = np.where(low[:, None], bg + nudge, wheel)
    p["gradient"] = rng.uniform(-0.3, 0.3, (n, 2)) * (rng.uniform(0, 1, (n, 1)) < 0.5)
    p["noise_sigma"] = rng.uniform(0.01, 0.05, n)

    k = _MAX_DISTRACTORS
    p["d_active"] = rng.uniform(0, 1, (n, k)) < 0.25
    p["d_stroke"] = rng.uniform(0, 1, (n, k)) < 0.6  # else a blob
    p["d_a"] = rng.uniform(0, IMAGE_SIZE, (n, k, 2))
    p["d_b"] = p["d_a"] + rng.uniform(-8, 8, (n, k, 2))
    p["d_width"] = rng.uniform(0.5, 1.1, (n, k))
    p["d_radius"] = rng.uniform(1.0, 2.8, (n, k))
    # A third of distractors reuse the shape colour, so colour alone cannot separate them.
    same = rng.uniform(0, 1, (n, k, 1)) < 0.33
    p["d_color"] = np.where(same, p["fg"][:, None, :], rng.uniform(0, 1, (n, k, 3)))

    p["occ_active"] = rng.uniform(0, 1, n) < 0.10
    p["occ_center"] = np.stack([p["cx"], p["cy"]], axis=1) + (
        rng.uniform(-0.9, 0.9, (n, 2)) * p["scale"][:, None]
    )
    p["occ_half"] = rng.uniform(2.0, 5.0, (n, 2))
    p["occ_color"] = np.where(rng.uniform(0, 1, (n, 1)) < 0.5, p["bg"], rng.uniform(0, 1, (n, 3)))
    return p


def _blend(img: _Array, cover: _Array, color: _Array) -> None:
    """Paint ``color`` (m, 3) over ``img`` (m, 3, H, W) with per-pixel ``cover`` (m, H, W)."""
    c = cover[:, None, :, :]
    img += (color[:, :, None, None].astype(_F) - img) * c


def _render_chunk(p: dict[str, _Array], lo: int, hi: int, noise: _Array) -> _Array:
    m = hi - lo
    centers = np.arange(IMAGE_SIZE, dtype=_F) + _F(0.5)
    X = np.broadcast_to(centers[None, None, :], (m, IMAGE_SIZE, IMAGE_SIZE))
    Y = np.broadcast_to(centers[None, :, None], (m, IMAGE_SIZE, IMAGE_SIZE))

    def col(name: str) -> _Array:
        return p[name][lo:hi].astype(_F)

    # Background: flat colour plus an optional luminance gradient across the frame.
    g = col("gradient")
    ramp = (g[:, 0, None, None] * (X - _F(16.0)) + g[:, 1, None, None] * (Y - _F(16.0))) / _F(
        IMAGE_SIZE
    )
    img = col("bg")[:, :, None, None] + ramp[:, None, :, :]

    # Main shape: map pixel centres into shape-local coordinates, evaluate the class SDF.
    scale = col("scale")
    aspect = col("aspect")
    dx = X - col("cx")[:, None, None]
    dy = Y - col("cy")[:, None, None]
    c, s = col("cos")[:, None, None], col("sin")[:, None, None]
    su = (scale * aspect[:, 0])[:, None, None]
    sv = (scale * aspect[:, 1])[:, None, None]
    u = (c * dx + s * dy) / su
    v = (c * dy - s * dx) / sv
    labels = p["labels"][lo:hi]
    sdf = np.empty((m, IMAGE_SIZE, IMAGE_SIZE), dtype=_F)
    extra = p["extra"][lo:hi]
    for cls in range(len(SHAPE_CLASSES)):
        idx = np.flatnonzero(labels == cls)
        if idx.size:
            sdf[idx] = _shape_sdf(cls, u[idx], v[idx], extra[idx])
    # Local units -> pixels; the smaller axis scale keeps edges crisp rather than blurry.
    px = sdf * np.minimum(su, sv)
    _blend(img, np.clip(_F(0.5) - px, _F(0.0), _F(1.0)), col("fg"))

    # Distractors: thin strokes (segment SDF) or small blobs, on top of the shape.
    active, stroke = p["d_active"][lo:hi], p["d_stroke"][lo:hi]
    da, db = col("d_a"), col("d_b")
    width, radius, dcol = col("d_width"), col("d_radius"), col("d_color")
    for k in range(_MAX_DISTRACTORS):
        ax, ay = da[:, k, 0, None, None], da[:, k, 1, None, None]
        bx, by = db[:, k, 0, None, None], db[:, k, 1, None, None]
        pax, pay = X - ax, Y - ay
        bax, bay = bx - ax, by - ay
        h = np.clip((pax * bax + pay * bay) / (bax * bax + bay * bay + _F(1e-6)), 0, 1)
        h = np.where(stroke[:, k, None, None], h, _F(0.0))  # a blob is a zero-length stroke
        ex, ey = pax - bax * h, pay - bay * h
        r = np.where(stroke[:, k], width[:, k], radius[:, k])[:, None, None]
        cover = np.clip(_F(0.5) + r - np.sqrt(ex * ex + ey * ey), _F(0.0), _F(1.0))
        cover *= active[:, k, None, None]
        _blend(img, cover, dcol[:, k])

    # Occluder: an axis-aligned rectangle hiding part of the shape in some images.
    oc, oh = col("occ_center"), col("occ_half")
    cover_x = np.clip(oh[:, 0, None, None] + _F(0.5) - np.abs(X - oc[:, 0, None, None]), 0, 1)
    cover_y = np.clip(oh[:, 1, None, None] + _F(0.5) - np.abs(Y - oc[:, 1, None, None]), 0, 1)
    cover = cover_x * cover_y * p["occ_active"][lo:hi, None, None]
    _blend(img, cover.astype(_F), col("occ_color"))

    img += noise * col("noise_sigma")[:, None, None, None]
    np.clip(img * _F(255.0), _F(0.0), _F(255.0), out=img)
    return np.rint(img).astype(np.uint8)


def generate_shapes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``n`` shape images, deterministically from ``seed``.

    Args:
        n: Number of images (>= 0). Classes are balanced: each appears ``n // 10`` or
            ``n // 10 + 1`` times, in a seed-dependent order.
        seed: Seed for ``numpy.random.default_rng``; no global random state is touched.

    Returns:
        ``(images, labels)``: uint8 tensor ``(n, 3, 32, 32)`` and int64 tensor ``(n,)`` with
        values indexing :data:`SHAPE_CLASSES`.

    Raises:
        UserError: If ``n`` or ``seed`` is negative.
    """
    if n < 0:
        raise UserError(f"number of shape images must be >= 0, got {n}")
    if seed < 0:
        raise UserError(f"shapes seed must be >= 0, got {seed}")
    p = _draw_params(n, seed)
    # Noise comes from its own stream so it does not depend on the chunking below.
    noise_rng = np.random.default_rng([seed, 1])
    out = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        noise = noise_rng.standard_normal((hi - lo, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=_F)
        out[lo:hi] = _render_chunk(p, lo, hi, noise)
    return torch.from_numpy(out), torch.from_numpy(p["labels"].copy())
