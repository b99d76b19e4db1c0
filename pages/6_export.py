"""Page 6: export and report. The session's pruned model (or the dense one before anything is
pruned) as a reloadable checkpoint, an ONNX file checked with onnxruntime, an int8 version
measured against float (`ui.quantize_panel`), the recipe that repeats it from the command line,
CSV tables, and a self-contained HTML report."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from pruning_core import export
from pruning_core.errors import UserError
from ui.export_docs import (
    build_report,
    checkpoint_zip,
    export_metrics,
    export_recipe_text,
    export_stem,
)
from ui.jobs_panel import measurement_result
from ui.loaders import shared_data, shared_model
from ui.quantize_panel import quantize_panel
from ui.session import PrunedModel, pruned
from ui.state import init_state, selection, session_cached
from ui.widgets import baseline_or_stop

init_state()
st.title("Export & report")
st.caption(
    "Take the result with you: a checkpoint that reloads without running any code from the file, "
    "an ONNX model verified against PyTorch, an int8 model measured against float, the recipe "
    "that repeats the run from the command line, the numbers as CSV, and a report with the plots "
    "that opens offline."
)
model_ref, dataset_ref = selection()
base = baseline_or_stop(model_ref, dataset_ref)
dense, data = shared_model(model_ref), shared_data(dataset_ref)

pm: PrunedModel | None = pruned()
loaded = pm.loaded if pm is not None else dense
spec = loaded.spec
if pm is None:
    st.info(
        f"Nothing is pruned in this session yet, so everything below exports the **dense** model "
        f"`{model_ref}` as it is. Prune it on the Prune page (and fine-tune it) to export the "
        "pruned one."
    )
else:
    sp = float(pm.result.get("sparsity", 0.0))
    st.success(
        f"Exporting your **{pm.stage}** model: `{pm.model_ref}` {pm.config.method} "
        f"{pm.config.granularity}, sparsity {sp:.1%}; accuracy "
        f"{(pm.accuracy or 0):.2%} on all {base['n']} validation images (dense {base['accuracy']:.2%})."
    )
stem = export_stem(model_ref, pm)
# Everything derived from the model is cached per version of the session's model.
version = f"{model_ref}|{dataset_ref}|{pm.created if pm is not None else 'dense'}"
sel = (model_ref, dataset_ref)
metrics = export_metrics(model_ref, dataset_ref, base, loaded, pm)
recipe = metrics.get("recipe")
outcome = export.finetune_outcome(metrics)
if outcome:
    # The report says it too; a fine-tune that made the model worse is never left unsaid.
    lowered = (export.finetune_change(metrics) or 0.0) < 0
    (st.warning if lowered else st.caption)(outcome)

# --- checkpoint ---------------------------------------------------------------------------------

st.subheader("Checkpoint")
if loaded.arch is None:
    st.error(
        "This model was loaded from a pickled module with no known architecture, so it cannot be "
        "saved as a safe checkpoint. Export it to ONNX instead."
    )
else:
    zipped = session_cached(
        "export_cache::zip", version,
        lambda: checkpoint_zip(loaded, metrics, recipe, dataset_ref, stem),
    )  # fmt: skip
    st.download_button(
        f"Download checkpoint ({len(zipped) / 1024:,.0f} KiB zip)",
        zipped,
        f"{stem}.zip",
        "application/zip",
        key="export_dl_checkpoint",
        type="primary",
    )
    st.caption(
        "A folder with `model.safetensors` (tensors only) and `model.json` (architecture, input "
        "spec, and the surgery that rebuilds a physically pruned model), plus metrics and recipe. "
        f"Unzip and use it anywhere a model is accepted: `pruning-lab evaluate --model {stem} "
        f"--dataset {dataset_ref}`. Loading never unpickles code."
    )

# --- ONNX ---------------------------------------------------------------------------------------

st.subheader("ONNX")
st.caption(
    "Exported with a dynamic batch dimension, then run once through onnxruntime on validation "
    "images; the file is offered only if its outputs match PyTorch's. It carries the input "
    f"normalisation as metadata: {export.onnx_metadata(spec)['preprocessing']}."
)
if st.button("Export to ONNX", key="export_make_onnx"):
    try:
        with st.spinner("Exporting and checking with onnxruntime..."):
            x, _ = data.tensors("val", spec, limit=8)
            blob, check = export.onnx_bytes(loaded.model, spec, example=x)
        st.session_state["export_onnx"] = (version, blob, check.to_dict())
    except UserError as e:
        st.error(f"ONNX export failed: {e}")
onnx_state = st.session_state.get("export_onnx")
if isinstance(onnx_state, tuple) and onnx_state[0] == version:
    _, blob, check = onnx_state
    c1, c2 = st.columns([2, 3])
    c1.metric(
        "Max |ONNX − PyTorch|",
        f"{check['max_abs_diff']:.2e}",
        help=f"largest absolute difference of the logits on {check['batch_size']} "
        f"{check['input']}; accepted up to {check['atol']:g}",
    )
    c2.download_button(
        f"Download ONNX ({check['bytes'] / 1024:,.0f} KiB)",
        blob,
        f"{stem}.onnx",
        "application/octet-stream",
        key="export_dl_onnx",
    )
    c2.caption(
        f"opset {check['opset']}, {check['exporter']} exporter, checked on {check['batch_size']} "
        f"{check['input']} in {check['seconds']:.1f} s. Masked zeros stay stored as zeros: ONNX "
        "runtimes run them as dense weights."
    )

# --- int8 ---------------------------------------------------------------------------------------

quantize_panel(
    loaded.model, spec, data, selection=sel, version=version,
    what=f"your {pm.stage} model" if pm is not None else "the dense model", stem=stem,
    cli_model=stem if pm is not None else model_ref,
    extra_meta={"dataset": dataset_ref, "stage": pm.stage if pm is not None else "dense"},
)  # fmt: skip

# --- recipe -------------------------------------------------------------------------------------

st.subheader("Recipe")
if recipe is None:
    st.caption("No recipe yet: a recipe describes a pruning run, and nothing is pruned.")
else:
    fmt = st.radio(
        "Format", ["json", "yaml"], key="export_recipe_format", persist_state="session", horizontal=True,
        help="Both are read by `pruning-lab prune --recipe FILE`.",
    )  # fmt: skip
    text = export_recipe_text(pm, fmt) if pm is not None else ""
    st.code(text, language=fmt)
    st.download_button(
        f"Download recipe.{fmt}", text, f"recipe.{fmt}", "text/plain", key="export_dl_recipe"
    )
    st.caption(
        f"Repeat this run from the command line: `pruning-lab prune --recipe recipe.{fmt} "
        "--out my-run`. Same seed, same masks."
    )

# --- CSV ----------------------------------------------------------------------------------------

st.subheader("CSV")
flat = {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}
c1, c2, c3 = st.columns(3)
c1.download_button(
    "Metrics (one row)",
    export.csv_bytes(pd.DataFrame([flat])),
    f"{stem}-metrics.csv",
    "text/csv",
    key="export_dl_metrics_csv",
)
layer_sp = metrics.get("layer_sparsity") or {}
if layer_sp:
    c2.download_button(
        "Sparsity per layer",
        export.csv_bytes(
            pd.DataFrame({"layer": list(layer_sp), "sparsity": list(layer_sp.values())})
        ),
        f"{stem}-layers.csv",
        "text/csv",
        key="export_dl_layers_csv",
    )
sweep_res = measurement_result("sweep", sel)
sweep_df = sweep_res["df"] if sweep_res is not None else None
if sweep_df is not None:
    c3.download_button(
        "Accuracy-vs-sparsity sweep",
        export.csv_bytes(sweep_df),
        f"{stem}-sweep.csv",
        "text/csv",
        key="export_dl_sweep_csv",
    )
else:
    c3.caption("Run a sweep on the Trade-offs page to export it here too.")

# --- report -------------------------------------------------------------------------------------

st.subheader("HTML report")
st.caption(
    "One file with the accuracy-vs-sparsity and latency plots, the metrics and the model card; "
    "plotly is inlined, so it opens offline. Latency is measured now, on this machine."
)
lat_res = measurement_result("latency", sel)
comp_res = measurement_result("companions", sel)  # the Trade-offs page's one view, if run
comp_df = comp_res["df"] if comp_res is not None else None
if comp_df is not None and comp_res is not None:
    comp_df.attrs.update(comp_res["attrs"])
    st.caption("The report includes the companion trade-offs measured on the Trade-offs page.")
if st.button("Build the report", key="export_make_report"):
    try:
        with st.spinner("Timing the model and drawing the report..."):
            page = build_report(
                metrics, model_ref, loaded, dense, pruned=pm is not None, sweep=sweep_df,
                latency=lat_res["df"] if lat_res is not None else None,
                latency_attrs=lat_res["attrs"] if lat_res is not None else {},
                companions=comp_df, data=data,
            )  # fmt: skip
        st.session_state["export_report"] = (version, page)
    except UserError as e:
        st.error(f"The report could not be built: {e}")
rep = st.session_state.get("export_report")
if isinstance(rep, tuple) and rep[0] == version:
    page = rep[1]
    st.download_button(
        f"Download report ({len(page) / 2**20:.1f} MB HTML)",
        page,
        f"{stem}-report.html",
        "text/html",
        key="export_dl_report",
        type="primary",
    )
    st.caption(
        "Self-contained: no external script"
        if export.is_self_contained(page)
        else "Warning: the report references external files"
    )

with st.expander("Metrics as exported"):
    st.code(json.dumps({k: v for k, v in metrics.items() if k != "curve"}, indent=2,
                       default=str), language="json")  # fmt: skip
