"""Page 5: trade-offs. Accuracy vs sparsity per method (with and without fine-tune), latency vs
sparsity per backend, size vs accuracy with the Pareto front, per-layer sensitivity, and runs
from the store side by side. Long measurements run as background jobs with progress."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st
import torch

from pruning_core import plots
from pruning_core.errors import UserError
from pruning_core.experiments import sensitivity, sweep
from pruning_core.export import csv_bytes
from pruning_core.jobs import JobContext, get_runner
from pruning_core.prune import list_methods
from pruning_core.stats import count_params
from pruning_core.store import RunStore
from pruning_core.tradeoffs import latency_vs_sparsity, pareto_front
from pruning_core.train import TrainConfig
from ui.loaders import shared_data, shared_model
from ui.session import pruned
from ui.state import init_state, selection

init_state()
st.title("Trade-offs")
st.caption(
    "What pruning buys and what it costs, measured here and now: accuracy against sparsity for "
    "each method, latency of each way of running a pruned model, size against accuracy, and "
    "which layers can lose the most. Each measurement runs in the background; you may change "
    "pages meanwhile."
)
model_ref, dataset_ref = selection()
try:
    loaded, data = shared_model(model_ref), shared_data(dataset_ref)
    data.check_spec(loaded.spec)
except UserError as e:
    st.error(f"This model and dataset do not fit together: {e}")
    st.stop()
spec = loaded.spec
n_val = int(data.val[1].numel())
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
METHODS = {m.name: m for m in list_methods()}


def _work_copy() -> torch.nn.Module:
    """A private trainable copy of the shared model for a job (the cached one stays frozen)."""
    m = copy.deepcopy(loaded.model).cpu()
    for p in m.parameters():
        p.requires_grad_(True)
    return m


def _ratios(text: str, lo: float = 0.0, hi: float = 0.98) -> list[float]:
    try:
        vals = sorted({float(t) for t in text.replace(";", ",").split(",") if t.strip()})
    except ValueError:
        raise UserError(f"ratios must be numbers separated by commas, got {text!r}") from None
    bad = [v for v in vals if not lo < v <= hi]
    if not vals or bad:
        raise UserError(f"give ratios in ({lo:g}, {hi:g}], e.g. 0.5, 0.7, 0.9")
    return vals


# --- background jobs ----------------------------------------------------------------------------


def _start(
    slot: str,
    fn: Callable[[JobContext], Any],
    *,
    name: str,
    config: dict[str, Any],
    kind: str | None = None,
) -> None:
    """Queue a measurement under `slot`; the fragment below follows it and keeps its result.

    `kind` is the run store's kind (default: the slot's name).
    """
    try:
        job = get_runner().submit(
            fn, name=name, kind=kind or slot, record=True, model=model_ref, dataset=dataset_ref,
            config=config,
        )  # fmt: skip
    except UserError as e:
        st.error(str(e))
        return
    st.session_state[f"tradeoff_{slot}_job"] = job.id
    st.session_state[f"tradeoff_{slot}_error"] = None


def _result(kind: str) -> dict[str, Any] | None:
    """This session's latest finished result of `kind` for the current model and dataset."""
    res = st.session_state.get(f"tradeoff_{kind}_result")
    if isinstance(res, dict) and res.get("selection") == (model_ref, dataset_ref):
        return res
    return None


def _follow(kind: str) -> None:
    """Progress, cancel, and hand-over of the job's result into session state."""
    job_id = st.session_state.get(f"tradeoff_{kind}_job")
    try:
        job = get_runner().get(job_id) if job_id else None
    except UserError as e:
        st.error(f"Background jobs are not available on this server: {e}")
        return
    if job is None:
        return
    snap = job.snapshot()
    if not job.is_finished:
        where = (
            f"queued, position {snap['queue_position']}"
            if snap["status"] == "queued"
            else snap["message"] or "running"
        )
        st.progress(snap["progress"], text=f"{job.name}: {where} ({snap['elapsed']:.0f} s)")
        if st.button("Cancel", key=f"tradeoff_cancel_{kind}"):
            job.cancel()
        return
    st.session_state[f"tradeoff_{kind}_job"] = None
    if snap["status"] == "failed":
        st.session_state[f"tradeoff_{kind}_error"] = snap["error"]
    elif snap["status"] == "cancelled" and not isinstance(job.result, dict):
        st.session_state[f"tradeoff_{kind}_error"] = f"cancelled ({snap['error']}), no results"
    elif isinstance(job.result, dict) and "frame" in job.result:
        df = pd.DataFrame(job.result["frame"])
        st.session_state[f"tradeoff_{kind}_result"] = {
            "selection": (model_ref, dataset_ref),
            "df": df,
            "attrs": job.result.get("attrs", {}),
            "cancelled": snap["status"] == "cancelled",
            "seconds": snap["elapsed"],
            "run_id": job.run_id,
        }
        st.session_state[f"tradeoff_{kind}_error"] = None
    st.rerun()


def job_panel(kind: str) -> None:
    """Show the job of `kind` while it runs (polled every second), then its outcome."""

    @st.fragment(run_every=1.0 if st.session_state.get(f"tradeoff_{kind}_job") else None)
    def _panel() -> None:
        _follow(kind)

    _panel()
    err = st.session_state.get(f"tradeoff_{kind}_error")
    if err:
        st.error(f"The measurement did not finish: {err}")


def _finish(ctx: JobContext, df: pd.DataFrame, csv_name: str) -> dict[str, Any]:
    """What a job returns (and the store keeps), with its table saved as a CSV artifact."""
    if ctx.store is not None and ctx.run_id is not None and len(df):
        ctx.store.write_artifact(ctx.run_id, csv_name, csv_bytes(df), name="csv")
    attrs = {k: v for k, v in df.attrs.items() if isinstance(v, str | int | float | bool)}
    return {"frame": df.to_dict("list"), "attrs": attrs, "points": len(df)}


# --- 1. accuracy vs sparsity --------------------------------------------------------------------

tab_acc, tab_lat, tab_size, tab_sens, tab_runs = st.tabs(
    ["Accuracy vs sparsity", "Latency", "Size vs accuracy", "Sensitivity", "Compare runs"]
)

with tab_acc:
    st.markdown(
        "Each point prunes a fresh copy of the dense model to one ratio and measures its accuracy "
        f"on the whole validation split ({n_val} images). Dashed lines: the same copies after "
        "fine-tuning (prune, then retrain with the pruned weights held at zero)."
    )
    c1, c2, c3, c4 = st.columns([3, 2, 2, 2])
    usable = [n for n, m in METHODS.items() if "unstructured" in m.granularities]
    c1.multiselect(
        "Methods",
        list(METHODS),
        key="tradeoff_methods",
        help="Magnitude removes the smallest weights; random is the baseline any criterion must "
        "beat; activation, APoZ, Wanda and Taylor look at data (calibration images) too.",
    )
    c2.selectbox(
        "Granularity",
        ["unstructured", "2:4", "channel"],
        key="tradeoff_granularity",
        help="Unstructured zeros single weights (best accuracy, no speed-up on dense hardware); "
        "2:4 keeps 2 of every 4 (GPU sparse kernels); channel removes whole filters (smaller, "
        "faster model, bigger accuracy loss).",
    )
    c3.text_input(
        "Ratios",
        key="tradeoff_ratios",
        help="Shares of weights removed, comma-separated (2:4 always removes 50%).",
    )
    c4.number_input(
        "Fine-tune epochs",
        0,
        5,
        key="tradeoff_ft_epochs",
        help="0 measures pruning alone. 1 epoch usually recovers most of the loss at moderate "
        "sparsity: that is the prune-then-retrain recipe.",
    )
    if st.button("Run the sweep", key="tradeoff_run_sweep", type="primary"):
        try:
            methods = list(st.session_state["tradeoff_methods"])
            if not methods:
                raise UserError("pick at least one method")
            ratios = _ratios(st.session_state["tradeoff_ratios"])
            gran = st.session_state["tradeoff_granularity"]
            epochs = int(st.session_state["tradeoff_ft_epochs"])
            tc = TrainConfig(epochs=max(epochs, 1), lr=1e-3, optimizer="adam", device=DEVICE)
            net = _work_copy()

            def run_sweep(ctx: JobContext) -> dict[str, Any]:
                df = sweep(
                    (net, spec), data, methods, ratios, gran, finetune_epochs=epochs,
                    train_config=tc, progress=ctx.report, cancel=ctx.cancel, device=DEVICE,
                )  # fmt: skip
                return _finish(ctx, df, "sweep.csv")

            cfg = {"methods": methods, "ratios": ratios, "granularity": gran,
                   "finetune_epochs": epochs, "device": DEVICE}  # fmt: skip
            _start("sweep", run_sweep, name=f"sweep {', '.join(methods)} ({gran})", config=cfg)
        except UserError as e:
            st.error(str(e))
    job_panel("sweep")
    res = _result("sweep")
    if res is None:
        st.info(
            "Run the sweep to see accuracy against sparsity. The defaults (magnitude vs random, "
            "three ratios, one fine-tune epoch) take seconds on the sample models."
        )
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
            st.dataframe(df, hide_index=True)
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
    c1.selectbox("Batch size", [1, 8, 32, 128], key="tradeoff_lat_batch")
    cores = os.cpu_count() or 1
    if st.session_state.get("tradeoff_lat_threads") is None:
        # One thread by default: timings on a shared machine are far steadier.
        st.session_state["tradeoff_lat_threads"] = 1
    c2.number_input(
        "CPU threads",
        1,
        cores,
        key="tradeoff_lat_threads",
        help="torch intra-op threads while timing; fewer threads make sparse kernels look better.",
    )
    c3.text_input("Ratios", key="tradeoff_lat_ratios", help="Shares removed, comma-separated.")
    if st.button("Measure latency", key="tradeoff_run_latency", type="primary"):
        try:
            ratios = _ratios(st.session_state["tradeoff_lat_ratios"])
            batch = int(st.session_state["tradeoff_lat_batch"])
            threads = min(int(st.session_state["tradeoff_lat_threads"]), cores)
            net = _work_copy()

            def run_latency(ctx: JobContext) -> dict[str, Any]:
                df = latency_vs_sparsity(
                    net, spec, ratios, batch_size=batch, device=DEVICE, threads=threads,
                    progress=ctx.report, cancel=ctx.cancel,
                )  # fmt: skip
                return _finish(ctx, df, "latency.csv")

            # The run store has no latency kind: a latency sweep is recorded as a sweep.
            cfg = {"measure": "latency", "ratios": ratios, "batch_size": batch,
                   "threads": threads, "device": DEVICE}  # fmt: skip
            _start("latency", run_latency, name="latency vs sparsity", config=cfg, kind="sweep")
        except UserError as e:
            st.error(str(e))
    job_panel("latency")
    res = _result("latency")
    if res is None:
        st.info("Measure latency to see what each backend gains (a few seconds on the samples).")
    else:
        df, a = res["df"], res["attrs"]
        sub = (
            f"device {a.get('device', DEVICE)}, {a.get('threads')} threads, batch "
            f"{a.get('batch_size')}, random input {spec.channels}x{spec.size}x{spec.size}; "
            "median of repeated runs"
        )
        st.plotly_chart(plots.latency_sparsity_figure(df, subtitle=sub), key="tradeoff_lat_chart")
        skipped = df[df["status"] != "ok"].drop_duplicates("backend")
        for _, row in skipped.iterrows():
            st.caption(f"Not timed: **{row['backend']}** ({row['reason']})")
        with st.expander("Why masked zeros give no speed-up"):
            st.markdown(
                "A dense matrix multiply does the same work whatever the values: a zero costs as "
                "much as any other number. Speed comes only from doing less work: a physically "
                "smaller model (structured pruning), or kernels that skip zeros (CSR on CPU at "
                "high sparsity, 2:4 on recent NVIDIA GPUs). Tiny models are dominated by "
                "overheads, so gains show best on larger layers and batches."
            )
        with st.expander("Table"):
            st.dataframe(df, hide_index=True)

# --- 3. size vs accuracy ------------------------------------------------------------------------

with tab_size:
    res = _result("sweep")
    if res is None:
        st.info("Run the sweep (first tab): each of its pruned models becomes a point here.")
    else:
        df = res["df"].copy()
        best = df["finetuned_accuracy"].where(df["finetuned_accuracy"].notna(), df["accuracy"])
        df["best_accuracy"] = best.combine(df["accuracy"], max)
        df["size_kib"] = df["params_nonzero"] * 4 / 1024
        df["label"] = [
            f"{m} at {r:.0%}" + (" + fine-tune" if pd.notna(f) else "")
            for m, r, f in zip(df["method"], df["ratio"], df["finetuned_accuracy"], strict=True)
        ]
        dense_params = count_params(loaded.model)
        dense_acc = float(df["dense_accuracy"].iloc[0]) if len(df) else math.nan
        dense_row = {"method": "dense", "label": "dense model", "size_kib": dense_params * 4 / 1024,
                     "best_accuracy": dense_acc}  # fmt: skip
        pts = pd.concat([pd.DataFrame([dense_row]), df], ignore_index=True)
        front = pareto_front(pts, "size_kib", "best_accuracy")
        st.plotly_chart(
            plots.size_accuracy_figure(
                pts, front, subtitle="size = non-zero weights x 4 bytes (fp32, values only); "
                "accuracy = best of pruned and fine-tuned, validation split",
            ),
            key="tradeoff_size_chart",
        )  # fmt: skip
        st.caption(
            "Points on the dashed line are Pareto-optimal: no other model is both smaller and "
            "more accurate. Storing only non-zero values needs a sparse format (CSR, bitmask) that "
            "adds index bytes; a physically shrunk model needs none."
        )
        st.dataframe(
            pts.loc[front, ["label", "size_kib", "best_accuracy"]], hide_index=True,
            column_config={"size_kib": st.column_config.NumberColumn("KiB", format="%.1f"),
                           "best_accuracy": st.column_config.NumberColumn("accuracy",
                                                                          format="%.4f")},
        )  # fmt: skip

# --- 4. sensitivity -----------------------------------------------------------------------------

with tab_sens:
    st.markdown(
        "Prune **one layer at a time** (the others stay dense) and measure the accuracy drop. "
        "Flat curves mark layers that can lose a lot; steep ones should be pruned gently. The "
        "Prune page's per-layer suggestion is built from exactly these curves."
    )
    c1, c2 = st.columns(2)
    c1.selectbox(
        "Criterion",
        [n for n, m in METHODS.items() if "unstructured" in m.granularities],
        key="tradeoff_sens_method",
    )
    c2.text_input("Ratios", key="tradeoff_sens_ratios")
    if st.button("Measure sensitivity", key="tradeoff_run_sens", type="primary"):
        try:
            ratios = _ratios(st.session_state["tradeoff_sens_ratios"])
            method = st.session_state["tradeoff_sens_method"]
            net = _work_copy()

            def run_sens(ctx: JobContext) -> dict[str, Any]:
                df = sensitivity(
                    net, spec, data, ratios, method=method, progress=ctx.report,
                    cancel=ctx.cancel, device=DEVICE,
                )  # fmt: skip
                return _finish(ctx, df, "sensitivity.csv")

            cfg = {"method": method, "ratios": ratios, "device": DEVICE}
            _start("sensitivity", run_sens, name=f"sensitivity ({method})", config=cfg)
        except UserError as e:
            st.error(str(e))
    job_panel("sensitivity")
    res = _result("sensitivity")
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
            st.dataframe(df, hide_index=True)

# --- 5. runs from the store ---------------------------------------------------------------------

with tab_runs:
    st.markdown(
        "Every fine-tune, sweep and sensitivity run of this server is kept in the run store, "
        "also when cancelled (with its partial curve). Pick runs to put them side by side."
    )
    try:
        store = RunStore()
        runs = store.list_runs(limit=100)
    except UserError as e:
        st.error(f"The run store cannot be read: {e}")
        runs = pd.DataFrame()
    if runs.empty:
        st.info("No runs yet: fine-tune a model or run a sweep and it appears here.")
    else:
        show = [c for c in ("id", "kind", "status", "name", "model", "dataset", "created",
                            "accuracy", "sparsity", "curve_points", "error") if c in runs]  # fmt: skip
        st.dataframe(runs[show], hide_index=True)
        labels = {
            int(i): f"#{i} {k} {s}: {n}"
            for i, k, s, n in zip(
                runs["id"], runs["kind"], runs["status"], runs["name"], strict=True
            )
        }
        ids = list(labels)
        wanted = [i for i in st.session_state.get("tradeoff_compare", []) if i in labels]
        if not wanted:
            with_curve = [int(i) for i in runs.loc[runs["curve_points"] > 0, "id"]]
            wanted = (with_curve or ids)[:2]
        st.session_state["tradeoff_compare"] = wanted
        chosen = st.multiselect(
            "Runs to compare", ids, key="tradeoff_compare", format_func=labels.__getitem__
        )
        if chosen:
            cmp = store.compare_runs(chosen)
            st.dataframe(cmp.set_index("id").T.astype(str))
            curves = {labels[i]: store.get_curve(i) for i in chosen}
            curves = {k: v for k, v in curves.items() if len(v)}
            if curves:
                c1, c2 = st.columns(2)
                c1.plotly_chart(
                    plots.runs_curves_figure(curves, "accuracy", "Validation accuracy"),
                    key="tradeoff_runs_acc",
                )
                c2.plotly_chart(
                    plots.runs_curves_figure(curves, "loss", "Training loss"),
                    key="tradeoff_runs_loss",
                )

pm = pruned()
if pm is not None:
    st.sidebar.caption(
        f"Your pruned model: {pm.config.method} {pm.config.granularity}, "
        f"{pm.result.get('sparsity', float('nan')):.0%} sparse ({pm.stage})."
    )
