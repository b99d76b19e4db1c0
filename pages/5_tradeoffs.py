"""Page 5: trade-offs. Accuracy vs sparsity per method (with and without fine-tune), latency vs
sparsity per backend, size vs accuracy with the Pareto front, per-layer sensitivity, ratio
strategies at one budget, runs from the store side by side, the per-class accuracy change of
any run, and pruning's companions (low rank, int8, dynamic gating; eager and ONNX Runtime) in one
view. Long measurements run as background jobs with progress."""

from __future__ import annotations

import os

import streamlit as st

from pruning_core import plots
from pruning_core.export import csv_bytes
from pruning_core.plans.masks import UnstructuredPlan
from pruning_core.stats import count_params
from ui.choices import criteria_help, criterion_choices
from ui.companions_panel import companions_panel
from ui.jobs_panel import measurement_panel, measurement_result, start_button
from ui.session import pruned
from ui.state import init_state, selection
from ui.texts import ZEROS_NO_SPEEDUP
from ui.tradeoff_jobs import (
    default_device,
    latency_job,
    parse_ratios,
    sensitivity_job,
    sweep_job,
    sweep_ratios,
)
from ui.tradeoff_panels import (
    compare_runs_panel,
    per_class_panel,
    size_accuracy_panel,
    strategies_panel,
    sweep_empty_state,
)
from ui.widgets import (
    criteria_multiselect,
    data_table,
    explain,
    granularity_select,
    model_and_data_or_stop,
)

init_state()
st.title("Trade-offs")
st.caption(
    "What pruning buys and what it costs, measured here and now: accuracy against sparsity for "
    "each method, latency of each way of running a pruned model, size against accuracy, and "
    "which layers can lose the most. Each measurement runs in the background; you may change "
    "pages meanwhile."
)
model_ref, dataset_ref = selection()
loaded, data = model_and_data_or_stop(model_ref, dataset_ref)
spec, sel = loaded.spec, (model_ref, dataset_ref)
n_val = int(data.val[1].numel())
DEVICE = default_device()

tab_acc, tab_lat, tab_size, tab_sens, tab_strat, tab_runs, tab_class, tab_comp = st.tabs(
    ["Accuracy vs sparsity", "Latency", "Size vs accuracy", "Sensitivity",
     "Ratio strategies at one budget", "Compare runs", "Per-class change",
     "Companions: one view"]
)  # fmt: skip

# --- 1. accuracy vs sparsity --------------------------------------------------------------------

with tab_acc:
    st.markdown(
        "Each point prunes a fresh copy of the dense model to one ratio and measures its accuracy "
        f"on the whole validation split ({n_val} images). Dashed lines: the same copies after "
        "fine-tuning (prune, then retrain with the pruned weights held at zero)."
    )
    c1, c2, c3, c4 = st.columns([3, 2, 2, 2])
    # The granularity first: the criteria offered are those that score it.
    sweep_gran = granularity_select(
        c2, model_ref, key="tradeoff_granularity", persist_state="session"
    )
    criteria_multiselect(
        c1,
        model_ref,
        sweep_gran,
        key="tradeoff_methods",
        persist_state="session",
        help="Criteria that score the weights; random is the baseline any criterion must "
        "beat.\n" + criteria_help(),
    )
    c3.text_input(
        "Ratios",
        key="tradeoff_ratios",
        persist_state="session",
        help="Shares of weights removed, comma-separated (N:M patterns fix their own share).",
    )
    c4.number_input(
        "Fine-tune epochs",
        0,
        5,
        key="tradeoff_ft_epochs",
        persist_state="session",
        help="0 measures pruning alone. 1 epoch usually recovers most of the loss at moderate "
        "sparsity: that is the prune-then-retrain recipe. Each point is fine-tuned with the "
        "default fine-tune, which keeps its best epoch by validation accuracy (the pruned "
        "weights included).",
    )
    start_button(
        "Run the sweep", "sweep", lambda: sweep_job(
            loaded.model, spec, data, st.session_state["tradeoff_methods"],
            sweep_ratios(
                st.session_state["tradeoff_ratios"], st.session_state["tradeoff_granularity"]
            ),
            st.session_state["tradeoff_granularity"],
            int(st.session_state["tradeoff_ft_epochs"]), DEVICE,
        ), sel, key="tradeoff_run_sweep",
    )  # fmt: skip
    measurement_panel("sweep", sel)
    res = measurement_result("sweep", sel)
    if res is None:
        st.info(
            sweep_empty_state(
                st.session_state["tradeoff_methods"], st.session_state["tradeoff_ratios"],
                st.session_state["tradeoff_granularity"],
                int(st.session_state["tradeoff_ft_epochs"]),
            )
        )  # fmt: skip
    else:
        df = res["df"]
        sub = (
            f"{dataset_ref} validation split, {n_val} images, device {DEVICE}; "
            f"{res['seconds']:.1f} s{' (cancelled: partial)' if res['cancelled'] else ''}"
        )
        st.plotly_chart(plots.accuracy_sparsity_figure(df, subtitle=sub), key="tradeoff_acc_chart")
        st.caption(
            "Magnitude beats random because small weights contribute little to the output; the "
            "gap widens with sparsity. Fine-tuning lets the remaining weights compensate."
        )
        with st.expander("Table"):
            data_table(df)
            st.download_button(
                "Download CSV", csv_bytes(df), "sweep.csv", "text/csv", key="tradeoff_sweep_csv"
            )

# --- 2. latency vs sparsity ---------------------------------------------------------------------

with tab_lat:
    st.markdown(
        "The same weights run four ways: **dense** (the unpruned model), **masked** (zeros "
        "stored in dense tensors), **shrunk** (channels physically removed) and **CSR** (sparse "
        "matrix kernels for Linear layers). **2:4** sparse kernels need a CUDA GPU."
    )
    c1, c2, c3 = st.columns(3)
    c1.selectbox("Batch size", [1, 8, 32, 128], key="tradeoff_lat_batch", persist_state="session")
    cores = os.cpu_count() or 1
    c2.number_input(
        "CPU threads",
        1,
        cores,
        key="tradeoff_lat_threads",
        persist_state="session",
        help="torch intra-op threads while timing; fewer threads make sparse kernels look better.",
    )
    c3.text_input(
        "Ratios",
        key="tradeoff_lat_ratios",
        persist_state="session",
        help="Shares removed, comma-separated.",
    )
    start_button(
        "Measure latency", "latency", lambda: latency_job(
            loaded.model, spec, parse_ratios(st.session_state["tradeoff_lat_ratios"]),
            int(st.session_state["tradeoff_lat_batch"]),
            min(int(st.session_state["tradeoff_lat_threads"]), cores), DEVICE,
        ), sel, key="tradeoff_run_latency",
    )  # fmt: skip
    measurement_panel("latency", sel)
    res = measurement_result("latency", sel)
    if res is None:
        st.info("Measure latency to see what each backend gains (a few seconds on the samples).")
    else:
        df, a = res["df"], res["attrs"]
        sub = a.get("protocol") or (
            f"device {a.get('device', DEVICE)}, {a.get('threads')} threads, batch "
            f"{a.get('batch_size')}, random input; median of repeated runs"
        )
        st.plotly_chart(plots.latency_sparsity_figure(df, subtitle=sub), key="tradeoff_lat_chart")
        skipped = df[df["status"] != "ok"].drop_duplicates("backend")
        for _, row in skipped.iterrows():
            st.caption(f"Not timed: **{row['backend']}**: {row['reason']}.")
        explain(ZEROS_NO_SPEEDUP, "Why masked zeros give no speed-up")
        with st.expander("Table"):
            # The medians' raw ratio is left out: `vs_dense` says whether it is measurable.
            data_table(df.drop(columns=["speedup"], errors="ignore"))

# --- 3. size vs accuracy ------------------------------------------------------------------------

with tab_size:
    size_accuracy_panel(measurement_result("sweep", sel), count_params(loaded.model))

# --- 4. sensitivity -----------------------------------------------------------------------------

with tab_sens:
    st.markdown(
        "Prune **one layer at a time** (the others stay dense) and measure the accuracy drop. "
        "Flat curves mark layers that can lose a lot; steep ones should be pruned gently. The "
        "Prune page's per-layer suggestion is built from exactly these curves."
    )
    c1, c2 = st.columns(2)
    # Sensitivity prunes single weights of one layer at a time.
    c1.selectbox(
        "Criterion",
        criterion_choices(UnstructuredPlan.name),
        key="tradeoff_sens_method",
        persist_state="session",
    )
    c2.text_input("Ratios", key="tradeoff_sens_ratios", persist_state="session")
    start_button(
        "Measure sensitivity", "sensitivity", lambda: sensitivity_job(
            loaded.model, spec, data, parse_ratios(st.session_state["tradeoff_sens_ratios"]),
            st.session_state["tradeoff_sens_method"], DEVICE,
        ), sel, key="tradeoff_run_sens",
    )  # fmt: skip
    measurement_panel("sensitivity", sel)
    res = measurement_result("sensitivity", sel)
    if res is None:
        st.info("Measure sensitivity to see which layers tolerate pruning.")
    else:
        df = res["df"]
        base = res["attrs"].get("base_accuracy")
        sub = f"{dataset_ref} validation split, {n_val} images" + (
            f"; dense accuracy {base:.2%}" if isinstance(base, float) else ""
        )
        st.plotly_chart(plots.sensitivity_figure(df, subtitle=sub), key="tradeoff_sens_chart")
        with st.expander("Table"):
            data_table(df)

# --- 5. ratio strategies at one budget ----------------------------------------------------------

with tab_strat:
    strategies_panel(loaded, data, sel, DEVICE)

# --- 6. runs from the store, and which classes pay ----------------------------------------------

with tab_runs:
    compare_runs_panel()

with tab_class:
    per_class_panel(loaded, data, sel, DEVICE)

with tab_comp:
    companions_panel(loaded, data, sel, DEVICE)

pm = pruned()
if pm is not None:
    st.sidebar.caption(
        f"Your pruned model: {pm.config.method} {pm.config.granularity}, "
        f"{pm.result.get('sparsity', float('nan')):.0%} sparse ({pm.stage})."
    )
