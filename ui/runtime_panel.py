"""Model & data's "Eager vs ONNX Runtime" control: the dense model's latency per image in eager
PyTorch and in ONNX Runtime at the batch sizes picked, with the protocol and when it was
measured.

The sweep is `latency.batch_sweep` (the same protocol as every latency of the app: threads,
warm-up, repeats, interleaved rounds, p10/p90), taken one batch size at a time in the page's run
with a progress bar (seconds on the sample models); the model is exported to ONNX once. It is
kept in the server's `latency_panel.latency_cache` for its context (model, batch sizes,
protocol, device), so every session sees the same measurement until it is re-measured or ten
minutes old.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import pandas as pd
import streamlit as st

from pruning_core.errors import UserError
from pruning_core.latency import PROTOCOL, SWEEP_BATCH_SIZES, batch_sweep
from pruning_core.layers import example_input
from pruning_core.ort import to_ort
from pruning_core.plots import batch_sweep_figure
from ui.latency_panel import DEVICE, latency_cache
from ui.loaders import shared_model
from ui.state import keep_settings, restore_settings
from ui.texts_runtime import RUNTIMES_EXPLAINED

__all__ = ["BATCH_CHOICES", "runtime_context", "runtime_ratios", "runtime_sweep_panel"]

BATCH_CHOICES = (1, 2, 4, 8, 16, 32, 64, 128)
_LABELS = {"dense": "eager PyTorch", "onnxruntime": "ONNX Runtime"}
# The panel's own settings: kept under a plain key across page changes and a reloaded tab
# (Streamlit forgets the value of a widget a run does not draw), restored before their widgets
# are drawn (`ui.state.restore_settings`).
_KEPT = "_model_runtime_settings"
_SETTINGS: dict[str, Any] = {"runtime_batches": list(SWEEP_BATCH_SIZES)}


def runtime_context(model_ref: str, sizes: Sequence[int]) -> Hashable:
    """What a runtime sweep of `model_ref` depends on: the model, the batches, the protocol,
    the device."""
    return ("runtimes", model_ref, tuple(sizes), PROTOCOL, DEVICE)


def runtime_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """ONNX Runtime against eager PyTorch at each batch size.

    Args:
        df: `latency.batch_sweep` rows of the backends `dense` and `onnxruntime`.

    Returns:
        One row per batch with both timings: `batch`, `eager ms/image` and `ORT ms/image`
        (medians), `eager / ORT` (above 1: ONNX Runtime is faster) and `ORT is`, the verdict
        (`timing.compare`'s words: "no measurable difference" when the p10-p90 ranges overlap).
    """
    ok = df[df["status"] == "ok"]
    eager = ok[ok["backend"] == "dense"].set_index("batch_size")
    ort = ok[ok["backend"] == "onnxruntime"].set_index("batch_size")
    both = sorted(set(eager.index) & set(ort.index))
    return pd.DataFrame({
        "batch": both,
        "eager ms/image": [float(eager.loc[b, "ms_per_image"]) for b in both],
        "ORT ms/image": [float(ort.loc[b, "ms_per_image"]) for b in both],
        "eager / ORT": [float(ort.loc[b, "speedup"]) for b in both],
        "ORT is": [str(ort.loc[b, "vs_dense"]) for b in both],
    })  # fmt: skip


def _measure(model_ref: str, sizes: list[int]) -> pd.DataFrame:
    """The sweep, one batch size at a time under a progress bar (the ONNX export done once)."""
    loaded = shared_model(model_ref)
    net, spec = loaded.model, loaded.spec
    bar = st.progress(0.0, text="Exporting to ONNX...")
    try:
        onnx = to_ort(net, example_input(net, spec, sizes[0], random=True), spec=spec,
                      threads=PROTOCOL.threads)  # fmt: skip
    except UserError as e:
        bar.empty()
        raise UserError(f"this model cannot run in ONNX Runtime: {e}") from None
    frames = []
    for i, b in enumerate(sizes):
        bar.progress(i / len(sizes), text=f"Timing batch {b} in both runtimes...")
        frames.append(
            batch_sweep(net, lambda n: example_input(net, spec, n, random=True), batch_sizes=[b],
                        backends=("dense", "onnxruntime"), dense=net, onnx=onnx,
                        protocol=PROTOCOL)
        )  # fmt: skip
    bar.empty()
    out = pd.concat(frames, ignore_index=True)
    out["label"] = out["backend"].map(_LABELS)
    # The protocol's words for one batch, naming every batch of the sweep instead.
    words = PROTOCOL.describe(batch_size=sizes[-1], device=DEVICE)
    out.attrs["protocol"] = words.replace(
        f"batch {sizes[-1]}", f"batch size{'s' if len(sizes) > 1 else ''} "
        + ", ".join(map(str, sizes)), 1,
    )  # fmt: skip
    return out


def runtime_sweep_panel(model_ref: str) -> None:
    """Batch sizes, a Measure / Re-measure button, the figure, the protocol beside it, the
    ratios and why runtimes differ."""
    st.subheader("Eager PyTorch vs ONNX Runtime")
    c1, c2 = st.columns([3, 1])
    restore_settings(_KEPT, _SETTINGS)
    picked = c1.multiselect(
        "Batch sizes", list(BATCH_CHOICES), key="runtime_batches",
        help="Images per timed call. Latency is shown per image (ms per call / batch size), "
        "so the batches share one axis.",
    )  # fmt: skip
    keep_settings(_KEPT, _SETTINGS)
    sizes = sorted({int(b) for b in picked})
    context = runtime_context(model_ref, sizes)
    cache = latency_cache()
    got = cache.get(context) if sizes else None
    c2.write("")  # aligns the button with the multiselect's box, below its label
    clicked = c2.button(
        "Measure" if got is None else "Re-measure", key="runtime_measure", type="primary",
        disabled=not sizes,
        help="Time the dense model in both runtimes now, batch by batch (seconds; kept for "
        "everyone for up to 10 minutes).",
    )  # fmt: skip
    if not sizes:
        st.caption("Pick at least one batch size.")
    if clicked and sizes:
        try:
            cache.measure(context, lambda: _measure(model_ref, sizes), refresh=True)
        except UserError as e:
            st.error(f"Not measured: {e}")
        else:
            st.rerun()  # the button says Re-measure, the figure shows the new measurement
    left, right = st.columns([3, 2])
    with right:
        st.markdown(RUNTIMES_EXPLAINED)
    with left:
        if got is None:
            st.caption(
                "Not measured yet for these batch sizes: Measure times the dense model in "
                "eager PyTorch and in ONNX Runtime at each of them."
            )
            return
        df = got.table
        fig = batch_sweep_figure(df, "Latency per image: eager PyTorch vs ONNX Runtime",
                                 subtitle=f"dense {model_ref}")  # fmt: skip
        # The figure's long y-axis title runs into its two-line title in a column this wide.
        fig.update_yaxes(title="ms per image (median, p10-p90)")
        st.plotly_chart(fig, key="runtime_chart")
        ratios = runtime_ratios(df)
        st.dataframe(
            ratios, hide_index=True, key="runtime_ratios",
            column_config={
                "eager ms/image": st.column_config.NumberColumn(format="%.3f"),
                "ORT ms/image": st.column_config.NumberColumn(format="%.3f"),
                "eager / ORT": st.column_config.NumberColumn(format="%.2fx"),
            },
        )  # fmt: skip
    with right:
        when = got.when()
        st.caption(
            f"Protocol: {df.attrs.get('protocol', PROTOCOL.describe())}; ONNX Runtime with "
            f"{PROTOCOL.threads} intra-op thread{'s' if PROTOCOL.threads != 1 else ''}, "
            f"sequential execution, all graph optimisations; the two runtimes are timed in "
            f"{PROTOCOL.rounds} interleaved rounds. {when[:1].upper() + when[1:]}. "
            f"`pruning-lab bench --model {model_ref} --backends dense,onnxruntime --batch-sizes "
            f"{','.join(map(str, sizes))}` times the same way. ORT is ONNX Runtime; the table "
            "names a speedup only where the p10-p90 ranges are apart."
        )
        for _, row in df[df["status"] != "ok"].drop_duplicates("backend").iterrows():
            st.caption(f"Not timed: **{_LABELS.get(row['backend'], row['backend'])}**: "
                       f"{row['reason']}.")  # fmt: skip
