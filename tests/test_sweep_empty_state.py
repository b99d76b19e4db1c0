"""The sweep's empty state says what its Run button will run: the settings above it, not fixed
defaults."""

from __future__ import annotations

from ui.tradeoff_panels import sweep_empty_state


def test_names_the_settings_it_will_run() -> None:
    said = sweep_empty_state(["magnitude", "taylor"], "0.3, 0.5, 0.7, 0.9", "channel", 0)
    assert "Magnitude" in said and "Taylor" in said and "Random" not in said, said
    assert "4 ratios" in said and "Channels" in said and "no fine-tune" in said, said

    said = sweep_empty_state(["random"], "0.5", "unstructured", 2)
    assert "1 ratio;" in said and "fine-tune 2 epochs" in said, said


def test_unreadable_ratios_and_no_criterion_are_said_not_counted() -> None:
    said = sweep_empty_state([], "half, most", "unstructured", 1)
    assert "no criterion picked yet" in said, said
    # The parse error's own words: the box itself says nothing.
    assert "no ratios yet: " in said and "ratios;" not in said, said
    said = sweep_empty_state(["magnitude"], "0.5, 1.5", "unstructured", 1)
    assert "got 1.5" in said, said


def test_a_pattern_granularity_is_one_point_per_criterion_whatever_the_box_holds() -> None:
    for text in ("0.5, 0.7, 0.9", "half"):
        said = sweep_empty_state(["magnitude", "random"], text, "2:4", 0)
        assert "one point per criterion" in said and "ratios;" not in said, said
        assert "no ratios yet" not in said, said
