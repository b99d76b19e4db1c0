"""The Trade-offs page's "Companions: one view" tab: dense, unstructured, channel (or head), low
rank, pruned + int8, int8 and dynamic gating (a magnitude gate, and a learned gate trained for
the fine-tune epochs) of the current model, each measured in eager
PyTorch and ONNX Runtime (`pruning_core.companions`), as a background job whose result is kept
in the session (slot `companions`) for the page and the Export page's report.

`companions_job` builds the job without Streamlit (it runs in the job runner's thread);
`companions_panel` draws the settings, the Run button, the job's progress, then the figure,
the table and a CSV download, or an empty state before any run.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from pruning_core.attention import has_attention
from pruning_core.companions import (
    COMPANION_VARIANTS,
    CompanionConfig,
    companion_summary,
    compare_companions,
    variant_label,
)
from pruning_core.data import DataBundle
from pruning_core.export import csv_bytes
from pruning_core.jobs import JobContext
from pruning_core.latency import PROTOCOL
from pruning_core.layers import trainable_copy
from pruning_core.models import LoadedModel
from pruning_core.plots_companions import RUNTIME_LABELS, companions_figure
from ui.jobs_panel import measurement_panel, measurement_result, start_button
from ui.state import keep_settings, restore_settings
from ui.texts_companions import (
    COMPANIONS_EXPLAINED,
    LEARNED_GATE_ONE_VIEW,
    LOWRANK_EXPLAINED,
    MASKED_SIZE_EXPLAINED,
)
from ui.texts_dynamic import DYNAMIC_EXPLAINED, DYNAMIC_NO_SPEEDUP
from ui.texts_runtime import QUANT_EXPLAINED, RUNTIMES_EXPLAINED
from ui.tradeoff_jobs import Measurement, frame_result
from ui.widgets import data_table

__all__ = [
    "SLOT",
    "companions_job",
    "companions_panel",
    "companions_subtitle",
    "companions_table",
    "not_measured",
]

SLOT = "companions"
# The panel's own settings: kept under a plain key across page changes (Streamlit forgets the
# value of a widget a run does not draw), restored before their widgets are drawn.
_KEPT = "_tradeoff_companions_settings"
_SETTINGS: dict[str, Any] = {
    "tradeoff_comp_ratio": 0.5,
    "tradeoff_comp_rank": 0.5,
    "tradeoff_comp_int8": "static",
    "tradeoff_comp_batch": PROTOCOL.batch_size,
    "tradeoff_comp_variants": list(COMPANION_VARIANTS[1:]),
    "tradeoff_comp_epochs": 0,
    # None: the whole validation split (set when drawn). It stays the default: the run is
    # within a minute on every sample model, and 2,000 images keep an accuracy's standard error
    # near half a point, where the int8 tolerance is two.
    "tradeoff_comp_images": None,
}


def companions_job(loaded: LoadedModel, data: DataBundle, config: CompanionConfig) -> Measurement:
    """The one view as a background job (`companions.compare_companions`) on a private
    trainable copy of the dense model (the shared one stays frozen).

    Args:
        loaded: The current dense model.
        data: Its dataset.
        config: What to build and how to measure.
    """
    net = LoadedModel(
        trainable_copy(loaded.model), loaded.spec, loaded.arch, loaded.source, dict(loaded.meta)
    )

    def run(ctx: JobContext) -> dict[str, Any]:
        df = compare_companions(net, data, config, progress=ctx.follow, cancel=ctx.cancel)
        return frame_result(ctx, df, "companions.csv")

    # The run store has no kind of its own for this: it is recorded as a sweep, as the latency
    # and strategies measurements are.
    return Measurement(run, "companions: one view", {"measure": "companions",
                       **config.to_dict()}, kind="sweep")  # fmt: skip


def companions_subtitle(attrs: dict[str, Any]) -> str:
    """What the figure shows was measured: protocol (threads, batch, device) and images."""
    n = attrs.get("n_val")
    images = f"accuracy on {int(n):,} validation images" if isinstance(n, int | float) else ""
    parts = [str(attrs.get("protocol", "")), images]
    return "; ".join(p for p in parts if p)


def companions_table(df: pd.DataFrame) -> pd.DataFrame:
    """The table as shown (and as the report prints it): whole counts (thousands separators),
    accuracy in percent, size in bytes and KiB, latency with p10/p90, the verdict against
    dense eager, the Pareto flags, and why a row was not measured."""

    def whole(col: str) -> pd.Series:
        return pd.to_numeric(df[col], errors="coerce").round().astype("Int64")

    return pd.DataFrame({
        "variant": df["label"],
        "runtime": df["runtime"].map(lambda r: RUNTIME_LABELS.get(str(r), str(r))),
        "accuracy %": (100 * pd.to_numeric(df["accuracy"], errors="coerce")).round(2),
        "size (bytes)": whole("size_bytes"),
        "size (KiB)": (pd.to_numeric(df["size_bytes"], errors="coerce") / 1024).round(1),
        "params": whole("params"),
        "MACs / image": whole("macs"),
        "median ms": pd.to_numeric(df["median_ms"], errors="coerce").round(3),
        "p10 ms": pd.to_numeric(df["p10_ms"], errors="coerce").round(3),
        "p90 ms": pd.to_numeric(df["p90_ms"], errors="coerce").round(3),
        "vs dense eager": df["vs_dense"].fillna(""),
        "Pareto (size)": df["pareto_size"].astype(bool),
        "Pareto (latency)": df["pareto_latency"].astype(bool),
        "status": df["status"],
        "why / note": df["reason"].fillna(""),
        "size counts": df["size_kind"].fillna(""),
        "params count": df["params_kind"].fillna(""),
        "how it was made": df["how"].fillna(""),
    })  # fmt: skip


def companions_panel(
    loaded: LoadedModel, data: DataBundle, selection: tuple[str, str], device: str
) -> None:
    """Settings, a Run button (a background job that survives page changes), the job's
    progress, then the figure, the table and a CSV download; an empty state before any run.

    Args:
        loaded: The current dense model.
        data: Its dataset.
        selection: The (model, dataset) references the result is kept under.
        device: Where a fine-tune runs (measuring is on the CPU).
    """
    st.markdown(
        "Pruning has companions: **low rank** factorises layers, **int8** quantization stores "
        "8-bit numbers, **dynamic gating** picks channels per image (a data-free magnitude "
        "gate; a learned gate trained for the fine-tune epochs when there are any), and a model "
        "can run eagerly in **PyTorch** or exported to **ONNX Runtime**. Here each is built from "
        "your current model and measured now: accuracy against size and against latency, with "
        "the Pareto front."
    )
    restore_settings(_KEPT, _SETTINGS)
    n_val = data.num_examples("val")
    c1, c2, c3, c4, c5, c6 = st.columns(6)
    c1.number_input(
        "Pruning ratio", 0.1, 0.9, step=0.1, key="tradeoff_comp_ratio",
        help="Share removed by unstructured pruning (of weights) and by channel or head pruning "
        "(of channels or heads); magnitude criterion.",
    )  # fmt: skip
    c2.number_input(
        "Rank removed", 0.1, 0.9, step=0.1, key="tradeoff_comp_rank",
        help="Low rank: share of each layer's rank removed by the truncated SVD; a layer that "
        "would not get smaller stays dense.",
    )  # fmt: skip
    c3.selectbox(
        "int8 mode", ["static", "dynamic"], key="tradeoff_comp_int8",
        help="static: activation ranges calibrated once (ONNX Runtime's fast int8 path); "
        "dynamic: measured on every call (slow for convolutions).",
    )  # fmt: skip
    c4.selectbox(
        "Batch (latency)", [1, 8, 32, 64], key="tradeoff_comp_batch",
        help=f"Images per timed call; {PROTOCOL.threads} CPU thread, the app's protocol.",
    )  # fmt: skip
    c5.number_input(
        "Fine-tune epochs", 0, 3, key="tradeoff_comp_epochs",
        help="After unstructured, channel and low-rank pruning (0: compare before any "
        "fine-tune). int8 of the pruned model uses the fine-tuned one. The learned gate is "
        "trained (gates and network) for as many epochs with the fine-tune loop, and is "
        "measured only from 1 epoch: untrained, it picks what the magnitude gate picks. Each "
        "epoch adds a training per trained variant; the learned gate's costs about as much as "
        "the unstructured fine-tune's (the gated network computes every channel): on "
        "shapes-resnet its one epoch took 4 minutes, and its whole point 11, on a 2-core CPU "
        "busy with other work.",
    )  # fmt: skip
    images = st.session_state["tradeoff_comp_images"]
    # The whole split by default; a count kept from a larger dataset is clamped to this one's.
    st.session_state["tradeoff_comp_images"] = min(int(images or n_val), n_val)
    c6.number_input(
        "Validation images", min(16, n_val), n_val, step=100, key="tradeoff_comp_images",
        help=f"Accuracy is measured on the first N validation images ({n_val:,}: the whole "
        "split).",
    )  # fmt: skip
    attention = has_attention(loaded.model)  # once, not once per option
    st.multiselect(
        "Variants (dense is always measured)", list(COMPANION_VARIANTS[1:]),
        key="tradeoff_comp_variants",
        format_func=lambda v: variant_label(v, attention=attention),
    )  # fmt: skip
    keep_settings(_KEPT, _SETTINGS)
    start_button(
        "Measure all of them", SLOT, lambda: companions_job(loaded, data, _config(device, n_val)),
        selection, key="tradeoff_run_companions",
        # The range is the default run's wall time measured on the 2-core machine with other
        # work running (load 2-3.7), from digits-mlp to shapes-resnet, in a process with the
        # imports done and in the served app (`pruning-lab app`'s settings).
        help="Builds every variant from the current model and measures it in both runtimes, "
        "as a background job with a progress bar: from under a second to 35-80 s on the "
        "sample models (measured on a busy 2-core CPU; the longest is shapes-resnet on its "
        "2,000 validation images).",
    )  # fmt: skip
    measurement_panel(SLOT, selection)
    res = measurement_result(SLOT, selection)
    if res is None or res["df"].empty:
        st.info(
            "Run the measurement to see every variant of your model side by side: accuracy "
            "against the size of the saved model and against measured latency, in eager "
            "PyTorch and ONNX Runtime, with the Pareto front."
        )
        _explanations()
        return
    df, a = res["df"], res["attrs"]
    sub = companions_subtitle(a) + ("; cancelled: partial" if res.get("cancelled") else "")
    st.plotly_chart(companions_figure(df, subtitle=sub), key="tradeoff_comp_chart")
    st.caption(
        companion_summary(df) + " Latency verdicts compare each point with dense eager PyTorch "
        "timed in the same rounds; where the p10-p90 ranges overlap it says no measurable "
        "difference."
    )
    measured = df["status"] == "ok"
    # Rows not measured would show "None" in every number column: they are listed with their
    # reason below instead (the CSV and the report keep every row).
    data_table(companions_table(df[measured]), key="tradeoff_comp_table")
    not_measured(df[~measured])
    st.download_button(
        "Download CSV", csv_bytes(df), "companions.csv", "text/csv", key="tradeoff_comp_csv"
    )
    _explanations()


def not_measured(df: pd.DataFrame) -> None:
    """The rows that were not measured, one line per reason: which variant in which runtime."""
    if df.empty:
        return
    lines = []
    for reason, g in df.groupby("reason", sort=False):
        what = ", ".join(
            f"{label} in {RUNTIME_LABELS.get(str(rt), str(rt))}"
            for label, rt in zip(g["label"], g["runtime"], strict=True)
        )
        lines.append(f"- **{what}**: {str(reason).rstrip('.')}.")
    st.markdown("**Not measured**\n" + "\n".join(lines))


def _config(device: str, n_val: int) -> CompanionConfig:
    """The settings as the widgets hold them when the button is clicked (its callback runs
    before the next script run, so it reads the session state, not this run's locals)."""
    ss = st.session_state
    images = int(ss.get("tradeoff_comp_images") or n_val)
    return CompanionConfig(
        ratio=float(ss["tradeoff_comp_ratio"]), rank_ratio=float(ss["tradeoff_comp_rank"]),
        int8_mode=str(ss["tradeoff_comp_int8"]), batch_size=int(ss["tradeoff_comp_batch"]),
        variants=("dense", *ss["tradeoff_comp_variants"]), epochs=int(ss["tradeoff_comp_epochs"]),
        limit=images if images < n_val else None, device=device,
    )  # fmt: skip


def _explanations() -> None:
    """Two plain sentences per concept on this tab."""
    with st.expander("What these are"):
        for text in (COMPANIONS_EXPLAINED, MASKED_SIZE_EXPLAINED, LOWRANK_EXPLAINED,
                     QUANT_EXPLAINED, RUNTIMES_EXPLAINED, DYNAMIC_EXPLAINED,
                     LEARNED_GATE_ONE_VIEW, DYNAMIC_NO_SPEEDUP):  # fmt: skip
            st.markdown(text)
