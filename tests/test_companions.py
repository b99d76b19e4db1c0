"""pruning_core.companions: one row per (variant, runtime) of the current model, every variant
measured or with a reason, int8 within the stated tolerance of float, smaller pruned models,
a true Pareto front, and reasons (not exceptions) where a variant does not apply."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from pruning_core.companions import (
    COMPANION_COLUMNS,
    COMPANION_VARIANTS,
    NOT_APPLICABLE,
    CompanionConfig,
    companion_summary,
    compare_companions,
)
from pruning_core.data import load_dataset
from pruning_core.errors import UserError
from pruning_core.models import load_model
from pruning_core.quantize import accuracy_within_int8_tolerance

# 200 images: the 2-point tolerance is 4 images, so one or two int8 disagreements fit.
LIMIT = 200
FAST = {"limit": LIMIT, "repeats": 3, "batch_size": 8}


@pytest.fixture(scope="module")
def cnn() -> pd.DataFrame:
    return compare_companions(load_model("digits-cnn"), load_dataset("digits"),
                              CompanionConfig(**FAST))  # fmt: skip


@pytest.fixture(scope="module")
def vit() -> pd.DataFrame:
    variants = ("dense", "channel", "lowrank", "int8", "dynamic")
    return compare_companions(load_model("shapes-vit"), load_dataset("shapes"),
                              CompanionConfig(variants=variants, **FAST))  # fmt: skip


def _row(df: pd.DataFrame, variant: str, runtime: str) -> pd.Series:
    sel = df[(df["variant"] == variant) & (df["runtime"] == runtime)]
    assert len(sel) == 1, (variant, runtime)
    return sel.iloc[0]


def _measured_or_reason(df: pd.DataFrame) -> None:
    assert list(df.columns) == list(COMPANION_COLUMNS)
    for r in df.itertuples():
        if r.status == "ok":
            assert 0.0 <= r.accuracy <= 1.0, r
            assert r.size_bytes > 0 and r.params > 0 and r.macs > 0, r
            assert r.p10_ms <= r.median_ms <= r.p90_ms, r
            assert r.vs_dense, r
        else:
            assert r.status == NOT_APPLICABLE, r
            assert isinstance(r.reason, str) and len(r.reason) > 20, r
            assert np.isnan(r.accuracy), r


def _assert_true_front(df: pd.DataFrame) -> None:
    """Flagged rows are beaten by none; every other measured row is beaten by one."""
    ok = df[df["status"] == "ok"]
    for flag, cost in (("pareto_size", "size_bytes"), ("pareto_latency", "median_ms")):
        assert not df.loc[df["status"] != "ok", flag].any()
        assert ok[flag].any()
        for i, r in ok.iterrows():
            c, a = ok[cost], ok["accuracy"]
            beaten = ((c <= r[cost]) & (a >= r["accuracy"])
                      & ((c < r[cost]) | (a > r["accuracy"]))).drop(i)  # fmt: skip
            assert bool(r[flag]) == (not beaten.any()), (flag, r["variant"], r["runtime"])


def test_cnn_every_variant_measured_or_with_a_reason(cnn: pd.DataFrame) -> None:
    assert list(dict.fromkeys(cnn["variant"])) == list(COMPANION_VARIANTS)
    assert len(cnn) == 2 * len(COMPANION_VARIANTS)
    _measured_or_reason(cnn)
    # What must be measured on a CNN: everything but int8 eagerly and gating in ONNX Runtime.
    for variant in ("dense", "unstructured", "channel", "lowrank"):
        for runtime in ("eager", "onnxruntime"):
            assert _row(cnn, variant, runtime)["status"] == "ok", (variant, runtime)
    for variant in ("int8", "prune_int8"):
        assert _row(cnn, variant, "onnxruntime")["status"] == "ok"
        assert "only in ONNX Runtime" in _row(cnn, variant, "eager")["reason"]
    dyn = _row(cnn, "dynamic", "eager")
    assert dyn["status"] == "ok" and "not faster" in dyn["reason"]
    assert _row(cnn, "dynamic", "onnxruntime")["status"] == NOT_APPLICABLE
    # Gating matches the channel model's MACs (within the search's half a percent).
    ch = _row(cnn, "channel", "eager")
    assert abs(dyn["macs"] / ch["macs"] - 1) < 0.01
    assert dyn["params"] == _row(cnn, "dense", "eager")["params"]  # the whole net is kept
    assert (cnn["n_val"] == LIMIT).all()
    assert cnn.attrs["granularity"] == "channel"
    assert "1 thread" in cnn.attrs["protocol"] and "batch 8" in cnn.attrs["protocol"]


def test_int8_within_tolerance_of_float_on_the_same_images(
    cnn: pd.DataFrame, vit: pd.DataFrame
) -> None:
    for df in (cnn, vit):
        dense = _row(df, "dense", "eager")["accuracy"]
        assert accuracy_within_int8_tolerance(_row(df, "int8", "onnxruntime")["accuracy"], dense)
        # The ONNX Runtime float graph computes what eager PyTorch does.
        assert abs(_row(df, "dense", "onnxruntime")["accuracy"] - dense) <= 1 / LIMIT
        # int8 is the smaller file.
        assert (
            _row(df, "int8", "onnxruntime")["size_bytes"]
            < 0.5 * _row(df, "dense", "onnxruntime")["size_bytes"]
        )
    shrunk = _row(cnn, "channel", "eager")["accuracy"]
    assert accuracy_within_int8_tolerance(
        _row(cnn, "prune_int8", "onnxruntime")["accuracy"], shrunk
    )


def test_pruned_rows_are_smaller_than_dense(cnn: pd.DataFrame, vit: pd.DataFrame) -> None:
    for df in (cnn, vit):
        dense = _row(df, "dense", "eager")
        for variant in ("channel", "lowrank"):
            for runtime in ("eager", "onnxruntime"):
                r = _row(df, variant, runtime)
                assert r["params"] < dense["params"], (variant, runtime)
                assert r["size_bytes"] < dense["size_bytes"] * 1.1, (variant, runtime)
            assert _row(df, variant, "eager")["size_bytes"] < dense["size_bytes"]
    # The structured variant says what it removed: channels of the CNN, heads of the ViT.
    assert _row(cnn, "channel", "eager")["label"] == "channel (shrunk)"
    assert _row(vit, "channel", "eager")["label"] == "head (shrunk)"
    # Unstructured: non-zero parameters and the sparse size, stated as such.
    u = _row(cnn, "unstructured", "eager")
    assert u["params_kind"] == "non-zero" and "sparse" in u["size_kind"]
    assert u["params"] < 0.6 * _row(cnn, "dense", "eager")["params"]


def test_pareto_flags_are_a_true_front(cnn: pd.DataFrame, vit: pd.DataFrame) -> None:
    _assert_true_front(cnn)
    _assert_true_front(vit)


def test_vit_prunes_heads_and_says_why_gating_does_not_apply(vit: pd.DataFrame) -> None:
    _measured_or_reason(vit)
    assert vit.attrs["granularity"] == "head"
    assert "head pruning" in _row(vit, "channel", "eager")["how"]
    for runtime in ("eager", "onnxruntime"):
        r = _row(vit, "dynamic", runtime)
        assert r["status"] == NOT_APPLICABLE and "CNN" in r["reason"]
        assert _row(vit, "lowrank", runtime)["status"] == "ok"


def test_model_without_convolutions_or_batchnorm_gets_reasons() -> None:
    df = compare_companions(
        load_model("digits-mlp"), load_dataset("digits"),
        CompanionConfig(variants=("dense", "channel", "dynamic"), limit=64, repeats=3,
                        batch_size=4),
    )  # fmt: skip
    _measured_or_reason(df)
    dyn = _row(df, "dynamic", "eager")
    assert dyn["status"] == NOT_APPLICABLE and "convolutions" in dyn["reason"]
    assert _row(df, "dense", "eager")["status"] == "ok"


def test_each_accuracy_evaluated_once_and_dense_timed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No model is evaluated twice on the same images (int8 reuses its float source's eager
    evaluation), and one interleaved timing holds dense eager and every measured row."""
    import pruning_core.companions as comp
    import pruning_core.quantize as quant

    evaluated: list[tuple[int, object]] = []
    timed: list[list[str]] = []

    def counting(real):  # type: ignore[no-untyped-def]
        def evaluate(model, data, spec, **kw):  # type: ignore[no-untyped-def]
            evaluated.append((id(model), kw.get("limit")))
            return real(model, data, spec, **kw)

        return evaluate

    real_time = comp.time_interleaved

    def time_interleaved(models, **kw):  # type: ignore[no-untyped-def]
        timed.append(list(models))
        return real_time(models, **kw)

    monkeypatch.setattr(comp, "evaluate", counting(comp.evaluate))
    monkeypatch.setattr(quant, "evaluate", counting(quant.evaluate))
    monkeypatch.setattr(comp, "time_interleaved", time_interleaved)
    df = compare_companions(load_model("digits-cnn"), load_dataset("digits"),
                            CompanionConfig(limit=64, repeats=3, batch_size=4))  # fmt: skip
    assert len(evaluated) == len(set(evaluated)), evaluated
    # dense, unstructured, channel, low rank: eager and ONNX Runtime; int8 of dense and of
    # the channel model: int8 only (the float side is the eager evaluation above).
    assert len(evaluated) == 4 * 2 + 2
    assert len(timed) == 1 and timed[0][0] == "dense/eager"
    ok = df[df["status"] == "ok"]
    assert sorted(timed[0]) == sorted(f"{v}/{r}" for v, r in zip(ok["variant"], ok["runtime"],
                                                                  strict=True))  # fmt: skip
    assert (ok["vs_dense"] != "").all() and ok["median_ms"].notna().all()


def test_cancelled_before_start_says_so() -> None:
    stop = threading.Event()
    stop.set()
    df = compare_companions(load_model("digits-mlp"), load_dataset("digits"),
                            CompanionConfig(limit=16), cancel=stop)  # fmt: skip
    assert df.attrs["cancelled"]
    assert (df["status"] == "cancelled").all() and df["reason"].str.contains("cancelled").all()


@pytest.mark.parametrize(
    "kwargs",
    [{"ratio": 1.0}, {"rank_ratio": 0.0}, {"variants": ("pruned",)}, {"int8_mode": "int4"},
     {"limit": 0}, {"batch_size": 0}],
)  # fmt: skip
def test_config_refuses_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(UserError):
        CompanionConfig(**kwargs)  # type: ignore[arg-type]


def test_figure_panels_fronts_and_hover(cnn: pd.DataFrame) -> None:
    from pruning_core.plots_companions import companions_figure

    fig = companions_figure(cnn, subtitle=cnn.attrs["protocol"])
    layout = fig.to_dict()["layout"]
    assert layout["xaxis"]["title"]["text"].endswith("(KiB)")
    assert "(ms, log scale)" in layout["xaxis2"]["title"]["text"]
    assert "1 thread" in layout["title"]["text"] and "batch 8" in layout["title"]["text"]
    traces = {t.name: t for t in fig.data if t.xaxis == "x"}
    ok = cnn[cnn["status"] == "ok"]
    for label in ok["label"].unique():
        assert label in traces, label
    ch = traces["channel (shrunk)"]
    assert list(ch.marker.symbol) == ["circle", "diamond"]  # eager, ONNX Runtime
    assert "channel (shrunk)" in ch.text[0] and "KiB" in ch.text[0]
    for name, flag, x in (("Pareto front", "pareto_size", "size_bytes"),
                          ("Pareto front (latency)", "pareto_latency", "median_ms")):  # fmt: skip
        front = [t for t in fig.data if t.name == name]
        assert len(front) == 1 and front[0].line.shape == "hv"
        on = ok[ok[flag]].sort_values(x)
        assert list(front[0].y) == list(on["accuracy"])
    # The sentence under the figure names the front's rows in words.
    words = companion_summary(cnn)
    on_front = ok[ok["pareto_size"]]
    assert all(f"{label} (" in words for label in on_front["label"])
    assert "(onnxruntime)" not in words and "Best accuracy for its size:" in words
    # Not measured rows are not drawn: int8 has only its ONNX Runtime point. Its label names
    # the mode it was quantized in (from the result, whatever the panel's select says later).
    assert list(traces["int8 (static)"].marker.symbol) == ["diamond"]
    assert "pruned + int8 (static)" in traces


def test_report_has_the_companion_section(cnn: pd.DataFrame) -> None:
    from pruning_core.export import is_self_contained, pruning_report

    metrics = {"model": "digits-cnn", "dataset": "digits"}
    page = pruning_report(metrics, companions=cnn)
    assert "Companion trade-offs (one row per variant and runtime)" in page
    assert "Pareto front" in page and "Pareto front (latency)" in page
    dense_params = int(_row(cnn, "dense", "eager")["params"])
    assert f"{dense_params:,}" in page  # counts with thousands separators
    assert "only in ONNX Runtime" in page  # the reasons come along
    assert cnn.attrs["protocol"] in page
    assert is_self_contained(page)
    assert "Companion trade-offs" not in pruning_report(metrics)
