"""Two sessions at once: each prunes its own copy; the shared cached model is never mutated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from pruning_core.models import load_model

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "3_prune.py")


def _params(at: AppTest) -> int:
    value = next(m.value for m in at.metric if m.label == "Remaining params")
    return int(value.replace(",", ""))


def test_two_sessions_do_not_see_each_others_model(monkeypatch: pytest.MonkeyPatch) -> None:
    a = AppTest.from_file(PAGE, default_timeout=120).run()
    b = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not a.exception and not b.exception
    dense_b = _params(b)

    a.slider(key="prune_ratio").set_value(0.9).run()
    a.button(key="prune_apply").click().run()
    assert not a.exception
    assert a.session_state["prune_committed"].summary["params_nonzero"] < dense_b / 2

    # Session B: still the dense model and its own preview at its own slider position.
    b.run()
    assert "prune_committed" not in b.session_state
    assert _params(b) == dense_b
    b.slider(key="prune_ratio").set_value(0.2).run()
    assert _params(b) > dense_b * 0.7
    a.run()
    assert a.session_state["prune_committed"].summary["params_nonzero"] < dense_b / 2

    # The models are distinct objects, and the server-wide cached model is untouched.
    model_a = a.session_state["prune_committed"].model
    import ui.loaders
    from ui.loaders import shared_model

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("shared_model was not served from the cache the sessions used")

    monkeypatch.setattr(ui.loaders, "load_model", no_load)
    shared = shared_model("digits-cnn")  # a cache hit: the very object both sessions read
    monkeypatch.undo()
    assert model_a is not shared.model
    fresh = load_model("digits-cnn").model.state_dict()
    for k, v in shared.model.state_dict().items():
        assert torch.equal(v, fresh[k]), k
    assert int(torch.count_nonzero(model_a.fc1.weight)) < model_a.fc1.weight.numel() // 2
