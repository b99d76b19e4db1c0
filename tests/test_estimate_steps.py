"""The Prune page's accuracy estimate: refined in steps, kept per slider position, with a 95%
interval (pruning_core.slider.SliderPreview.estimate_steps, wilson_interval)."""

from __future__ import annotations

import math

import pytest

from pruning_core.data import load_dataset
from pruning_core.evaluate import evaluate
from pruning_core.models import load_model
from pruning_core.prune import PruneConfig
from pruning_core.slider import SliderPreview, wilson_interval


@pytest.fixture(scope="module")
def preview() -> SliderPreview:
    base = load_model("digits-cnn")
    return SliderPreview(
        base, PruneConfig(criterion="magnitude", granularity="unstructured"), load_dataset("digits")
    )


def test_steps_grow_and_the_last_equals_evaluate(preview: SliderPreview) -> None:
    stats = preview.update(0.8)
    seen = [
        (s.n_eval, s.accuracy, s.accuracy_interval)
        for s in preview.estimate_steps(stats, 300, first=50)
    ]
    assert [n for n, _, _ in seen] == [50, 100, 200, 300]
    full = evaluate(preview.model, preview.data, preview.spec, limit=300)
    assert seen[-1][1] == pytest.approx(full.accuracy, abs=1e-12)
    for _n, acc, (lo, hi) in seen:
        assert 0.0 <= lo <= acc <= hi <= 1.0
    # More images, a narrower interval (same kind of accuracy on this model).
    widths = [hi - lo for _, _, (lo, hi) in seen]
    assert widths[-1] < widths[0]


def test_a_position_seen_before_is_not_evaluated_again(preview: SliderPreview) -> None:
    first = preview.estimate(preview.update(0.6), 200)
    preview.estimate(preview.update(0.9), 200)  # another position in between
    again = preview.update(0.6)
    steps = list(preview.estimate_steps(again, 200))
    assert len(steps) == 1  # the kept estimate, in one step
    assert again.accuracy == first.accuracy and again.n_eval == first.n_eval == 200
    # Other per-layer ratios are another position.
    other = preview.update(0.6, {preview.unit_names[0]: 0.1})
    assert other.position != again.position
    assert len(list(preview.estimate_steps(other, 200, first=100))) == 2


def test_a_step_runs_in_chunks_and_stops_between_them(
    preview: SliderPreview, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user who moves on waits for one chunk of forward pass, not for the rest of a step."""
    import pruning_core.slider as slider

    calls: list[int] = []
    real = slider.predict_logits

    def counting(model, x, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(x))
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(slider, "predict_logits", counting)
    stats = preview.update(0.7)
    list(preview.estimate_steps(stats, 40, first=40))  # measures this model's throughput
    # Chunks of ~10 images: a step of 40 images is then several forward passes...
    monkeypatch.setattr(slider, "ESTIMATE_CHUNK_SECONDS", 10 * preview._seconds_per_image)
    stats = preview.update(0.75)
    calls.clear()
    seen = [s.n_eval for s in preview.estimate_steps(stats, 80, first=20)]
    assert seen == [20, 40, 80]
    assert len(calls) > len(seen) and max(calls) < 40
    full = evaluate(preview.model, preview.data, preview.spec, limit=80)
    assert stats.accuracy == pytest.approx(full.accuracy, abs=1e-12)
    # ...and a stop between two chunks ends the estimate at the last step shown.
    stats = preview.update(0.85)
    moved: list[bool] = []
    calls.clear()
    steps = preview.estimate_steps(stats, 80, first=20, stop=lambda: bool(moved))
    assert next(steps).n_eval == 20
    moved.append(True)  # the user moves on while the next step computes
    assert list(steps) == []
    assert stats.n_eval == 20 and sum(calls) < 80  # the rest was never evaluated


@pytest.mark.parametrize(("correct", "n"), [(0, 10), (10, 10), (93, 100), (450, 500), (1, 3)])
def test_wilson_interval_holds_the_proportion_and_stays_in_bounds(correct: int, n: int) -> None:
    lo, hi = wilson_interval(correct, n)
    assert 0.0 <= lo <= correct / n <= hi <= 1.0
    # Against the normal approximation where it is good (many images, p away from 0 and 1).
    if n >= 100 and 0.1 < correct / n < 0.9:
        p = correct / n
        half = 1.96 * math.sqrt(p * (1 - p) / n)
        assert (hi - lo) / 2 == pytest.approx(half, rel=0.05)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_previews_sharing_an_estimate_cache_evaluate_a_position_once() -> None:
    from pruning_core.slider import EstimateCache

    base, data = load_model("digits-cnn"), load_dataset("digits")
    config = PruneConfig(criterion="magnitude", granularity="channel")
    shared = EstimateCache(maxsize=2)
    one = SliderPreview(base, config, data, shared)
    two = SliderPreview(base, config, data, shared)  # another session, same selection
    alone = SliderPreview(base, config, data)
    first = one.estimate(one.update(0.4), 200)
    steps = list(two.estimate_steps(two.update(0.4), 200, first=50))
    assert len(steps) == 1 and len(shared) == 1  # kept by the first, not evaluated again
    own = alone.estimate(alone.update(0.4), 200)  # the same number as evaluating it
    assert steps[0].accuracy == first.accuracy == own.accuracy
    assert steps[0].accuracy_interval == own.accuracy_interval
    # Least recently used dropped first; a preview without the shared cache kept its own.
    one.estimate(one.update(0.2), 200)
    two.estimate(two.update(0.6), 200)
    assert len(shared) == 2
    assert len(list(two.estimate_steps(two.update(0.4), 200, first=50))) > 1
    assert len(alone._estimates) == 1


def test_a_slow_model_gets_a_smaller_first_step_and_the_same_final_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pruning_core.slider as slider

    base, data = load_model("digits-cnn"), load_dataset("digits")
    preview = SliderPreview(base, PruneConfig(criterion="magnitude"), data)
    assert preview.first_step_images() == slider.ESTIMATE_FIRST  # nothing measured yet
    list(preview.estimate_steps(preview.update(0.5), 200))
    measured = preview._seconds_per_image
    assert measured is not None and measured > 0
    # As if the model were slow: its first step then takes about ESTIMATE_FIRST_SECONDS.
    monkeypatch.setattr(slider, "ESTIMATE_FIRST_SECONDS", 40 * measured)
    first = preview.first_step_images()
    assert slider.ESTIMATE_FIRST_MIN <= first < slider.ESTIMATE_FIRST
    # Each step fills the same stats in place: read them as they land.
    seen = [(s.n_eval, s.accuracy) for s in preview.estimate_steps(preview.update(0.7), 200)]
    assert seen[0][0] == first and seen[-1][0] == 200
    full = evaluate(preview.model, preview.data, preview.spec, limit=200)
    assert seen[-1][1] == pytest.approx(full.accuracy, abs=1e-12)
    # Never below the floor, however slow.
    monkeypatch.setattr(slider, "ESTIMATE_FIRST_SECONDS", 0.0)
    assert preview.first_step_images() == slider.ESTIMATE_FIRST_MIN
