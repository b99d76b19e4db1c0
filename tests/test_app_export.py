"""AppTest of the Export & report page: dense before pruning, the pruned model after."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "6_export.py")


def _commit_pruned(at: AppTest, ratio: float = 0.6) -> None:
    """Put a pruned model into the session the way the Prune page does (through ui.session)."""
    from pruning_core.data import load_dataset
    from pruning_core.evaluate import evaluate
    from pruning_core.models import LoadedModel, load_model
    from pruning_core.prune import PruneConfig, prune_
    from pruning_core.stats import model_summary

    base = load_model("digits-cnn")
    model = copy.deepcopy(base.model)
    config = PruneConfig(method="magnitude", ratio=ratio)
    res = prune_(model, config)
    data = load_dataset("digits")
    acc = evaluate(model, data, base.spec).accuracy
    from ui.session import PrunedModel

    at.session_state["prune_committed"] = PrunedModel(
        loaded=LoadedModel(model, base.spec, base.arch, base.source, dict(base.meta)),
        model_ref="digits-cnn",
        dataset_ref="digits",
        config=config,
        masks=res.masks,
        result=res.to_dict(),
        summary=model_summary(model, base.spec),
        accuracy=acc,
    )


def _download(at: AppTest, key: str):  # type: ignore[no-untyped-def]
    for el in at.get("download_button"):
        if el.proto.id and key in el.proto.id:
            return el
    raise AssertionError(f"no download button {key}")


def test_dense_model_is_exported_before_pruning() -> None:
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception
    assert any("dense" in i.value for i in at.info)
    _download(at, "export_dl_checkpoint")
    assert not any("recipe" in (c.value or "") and c.language == "json" for c in at.code)


def test_pruned_model_export_onnx_recipe_report() -> None:
    at = AppTest.from_file(PAGE, default_timeout=120)
    _commit_pruned(at, 0.6)
    at.run()
    assert not at.exception
    assert any("pruned" in s.value for s in at.success)
    # Recipe: the CLI's format, with the session's settings.
    code = next(c for c in at.code if c.language == "json" and '"settings"' in c.value)
    recipe = json.loads(code.value)
    assert recipe["settings"]["ratio"] == pytest.approx(0.6)
    assert recipe["settings"]["model"] == "digits-cnn"
    # ONNX: exported, checked, and the measured difference shown.
    at.button(key="export_make_onnx").click().run()
    assert not at.exception
    diff = next(m for m in at.metric if m.label.startswith("Max |ONNX"))
    assert float(diff.value) < 1e-4
    _download(at, "export_dl_onnx")
    # Report: self-contained, holds plotly figures.
    at.button(key="export_make_report").click().run()
    assert not at.exception
    _version, page = at.session_state["export_report"]
    assert '<script src="http' not in page
    assert page.count('class="plotly-graph-div"') >= 2
    assert "Accuracy vs sparsity" in page and "Latency" in page
    # Which classes pay: the pruned model against dense, class by class, measured for the report.
    assert "Per-class accuracy change against dense" in page and "Hooker et al. 2019" in page
    assert any("Self-contained" in c.value for c in at.caption)


def test_a_fine_tune_that_lowered_accuracy_is_said_on_the_page_and_in_the_report() -> None:
    """A session model whose fine-tune (keep-best off) ended below its pruned accuracy."""
    from pruning_core.prune import PruneResult
    from pruning_core.recipe import Recipe
    from pruning_core.schedules import ScheduleResult
    from pruning_core.train import TrainConfig
    from pruning_core.workflow import Measures, RecipeResult

    at = AppTest.from_file(PAGE, default_timeout=120)
    _commit_pruned(at, 0.5)
    pm = at.session_state["prune_committed"]
    pm.stage = "fine-tuned"
    pm.run = RecipeResult(
        recipe=Recipe("digits-cnn", "digits", pm.config, finetune=TrainConfig(epochs=2)),
        loaded=pm.loaded,
        dense=Measures(0.9861, 1, 1, 1),
        after=Measures(0.9749, 1, 1, 1),
        schedule=ScheduleResult(
            prune=PruneResult(sparsity=0.5), pruned_accuracy=0.9889, finetuned_accuracy=0.9749
        ),
    )
    at.run()
    assert not at.exception
    said = [w.value for w in at.warning if "Fine-tuning lowered accuracy by 1.40 points" in w.value]
    assert len(said) == 1
    at.button(key="export_make_report").click().run()
    assert not at.exception
    _version, page = at.session_state["export_report"]
    assert "Fine-tuning lowered accuracy by 1.40 points" in page and "-1.40 points" in page
