"""Page 6: export and report. The session's pruned model (or the dense one before anything is
pruned) as a reloadable checkpoint, an ONNX file checked with onnxruntime, the recipe that
repeats it from the command line, CSV tables, and a self-contained HTML report."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st
import torch

from pruning_core import export
from pruning_core.errors import UserError
from pruning_core.latency import benchmark_backends
from pruning_core.store import RunStore
from ui.loaders import baseline, shared_data, shared_model
from ui.session import PrunedModel, pruned
from ui.state import init_state, selection

init_state()
st.title("Export & report")
st.caption(
    "Take the result with you: a checkpoint that reloads without running any code from the file, "
    "an ONNX model verified against PyTorch, the recipe that repeats the run from the command "
    "line, the numbers as CSV, and a report with the plots that opens offline."
)
model_ref, dataset_ref = selection()
try:
    base = baseline(model_ref, dataset_ref)
    dense = shared_model(model_ref)
    data = shared_data(dataset_ref)
except UserError as e:
    st.error(f"This model and dataset do not fit together: {e}")
    st.stop()

pm: PrunedModel | None = pruned()
loaded = pm.loaded if pm is not None else dense
spec = loaded.spec
if pm is None:
    st.info(
        f"Nothing is pruned in this session yet, so everything below exports the **dense** model "
        f"`{model_ref}` as it is. Prune it on the Prune page (and fine-tune it) to export the "
        "pruned one."
    )
    stem = f"{model_ref.replace(':', '-').replace('/', '-')}-dense"
else:
    sp = float(pm.result.get("sparsity", 0.0))
    st.success(
        f"Exporting your **{pm.stage}** model: `{pm.model_ref}` {pm.config.method} "
        f"{pm.config.granularity}, {sp:.1%} of the pruned layers' weights removed; accuracy "
        f"{(pm.accuracy or 0):.2%} on all {base['n']} validation images (dense {base['accuracy']:.2%})."
    )
    stem = f"{pm.model_ref.replace(':', '-').replace('/', '-')}-{pm.config.method}-{sp:.0%}"
stem = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in stem).strip("-.") or "model"
# Everything derived from the model is cached per version of the session's model.
version = f"{model_ref}|{dataset_ref}|{pm.created if pm is not None else 'dense'}"


def _run_metrics(run_id: Any) -> dict[str, Any]:
    if not isinstance(run_id, int):
        return {}
    try:
        return RunStore().get_run(run_id).metrics
    except UserError:
        return {}


def metrics_doc() -> dict[str, Any]:
    """The exported model's numbers, in the layout of `pruning-lab prune`'s metrics.json."""
    m: dict[str, Any] = {
        "model": model_ref,
        "arch": loaded.arch,
        "dataset": dataset_ref,
        "params_before": base["params"],
        "macs_before": base["macs"],
        "size_bytes_before": base["size_bytes"],
        "dense_accuracy": base["accuracy"],
        "val_images": base["n"],
    }
    if pm is None:
        m.update(method=None, granularity=None, target_ratio=0.0, sparsity=0.0,
                 params_after=base["params"], macs_after=base["macs"],
                 size_bytes_after=base["size_bytes"], pruned_accuracy=base["accuracy"],
                 finetuned_accuracy=None, stage="dense")  # fmt: skip
        return m
    s = pm.summary
    ran = _run_metrics(pm.finetune.get("run_id"))
    fine = pm.stage == "fine-tuned"
    m.update(
        method=pm.config.method, granularity=pm.config.granularity, scope=pm.config.scope,
        target_ratio=pm.config.effective_ratio, sparsity=pm.result.get("sparsity"),
        layer_sparsity=pm.result.get("layer_sparsity", {}),
        params_after=s.get("params_nonzero"), macs_after=s.get("macs"),
        size_bytes_after=s.get("size_bytes"),
        pruned_accuracy=ran.get("pruned_accuracy") if fine else pm.accuracy,
        finetuned_accuracy=pm.accuracy if fine else None, stage=pm.stage,
        history=list(pm.history), recipe=recipe_doc(),
    )  # fmt: skip
    if fine and ran.get("schedule_curve"):
        m["curve"] = ran["schedule_curve"]
    return m


def recipe_doc() -> dict[str, Any] | None:
    """The recipe of `pruning-lab prune --recipe` that repeats the session's model."""
    if pm is None:
        return None
    ft = pm.finetune
    train = ft.get("train") or None
    sched = ft.get("schedule") or {}
    reg = ft.get("regularizer")
    return export.make_recipe(
        model=pm.model_ref,
        dataset=pm.dataset_ref,
        prune=pm.config.to_dict(),
        train=train,
        schedule=str(sched.get("kind") or "oneshot"),
        steps=sched.get("steps"),
        distill=bool(train and float(train.get("distill_weight") or 0) > 0),
        regularize=reg if reg and reg != "none" else None,
        reg_strength=ft.get("reg_strength") if reg and reg != "none" else None,
        arch=loaded.arch if pm.model_ref.endswith((".pt", ".pth", ".safetensors")) else None,
    )


def _cached(name: str, make: Any) -> Any:
    """`make()` once per version of the session's model (a per-session cache)."""
    key = f"export_cache::{name}"
    hit = st.session_state.get(key)
    if isinstance(hit, tuple) and hit[0] == version:
        return hit[1]
    value = make()
    st.session_state[key] = (version, value)
    return value


metrics = metrics_doc()
recipe = metrics.get("recipe")

# --- checkpoint ---------------------------------------------------------------------------------

st.subheader("Checkpoint")
if loaded.arch is None:
    st.error(
        "This model was loaded from a pickled module with no known architecture, so it cannot be "
        "saved as a safe checkpoint. Export it to ONNX instead."
    )
else:
    arch: str = loaded.arch
    arch_kwargs = loaded.meta.get("arch_kwargs") or loaded.arch_kwargs
    files: dict[str, Any] = {"metrics.json": metrics}
    if recipe:
        files["recipe.json"] = recipe
    extra = {k: v for k, v in loaded.meta.items() if k not in ("surgery", "recipe")}
    extra["dataset"] = dataset_ref
    if recipe:
        extra["recipe"] = recipe

    def _zip() -> bytes:
        return export.checkpoint_zip(loaded.model, arch=arch, arch_kwargs=arch_kwargs,
                                     spec=spec, extra_meta=extra, files=files, folder=stem)  # fmt: skip

    zipped = _cached("zip", _zip)
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
    "images; the file is offered only if its outputs match PyTorch's."
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

# --- recipe -------------------------------------------------------------------------------------

st.subheader("Recipe")
if recipe is None:
    st.caption("No recipe yet: a recipe describes a pruning run, and nothing is pruned.")
else:
    fmt = st.radio(
        "Format", ["json", "yaml"], key="export_recipe_format", horizontal=True,
        help="Both are read by `pruning-lab prune --recipe FILE`.",
    )  # fmt: skip
    text = export.recipe_text(recipe, fmt)
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
sweep_res = st.session_state.get("tradeoff_sweep_result")
sweep_df = (
    sweep_res["df"]
    if isinstance(sweep_res, dict) and sweep_res.get("selection") == (model_ref, dataset_ref)
    else None
)
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
lat_res = st.session_state.get("tradeoff_latency_result")
lat_attrs: dict[str, Any] = lat_res.get("attrs", {}) if isinstance(lat_res, dict) else {}
lat_sweep = (
    lat_res["df"]
    if isinstance(lat_res, dict) and lat_res.get("selection") == (model_ref, dataset_ref)
    else None
)
if st.button("Build the report", key="export_make_report"):
    try:
        with st.spinner("Timing the model and drawing the report..."):
            threads = torch.get_num_threads()
            x = torch.randn(32, spec.channels, spec.size, spec.size)
            if lat_sweep is not None:
                lat, note = (
                    lat_sweep,
                    "from the Trade-offs page: "
                    + ", ".join(f"{k} {v}" for k, v in lat_attrs.items() if k != "cancelled"),
                )
            else:
                lat = benchmark_backends(
                    loaded.model, x, backends=["dense", "masked", "structured", "csr"],
                    dense=dense.model, repeats=20, max_seconds=3.0,
                )  # fmt: skip
                note = f"CPU, {threads} threads, batch 32, random input"
            card = export.model_card(model_ref)
            page = export.pruning_report(
                metrics, title=f"Pruning report: {model_ref}", sweep=sweep_df, latency=lat,
                latency_note=note, model_card=card,
                notes=["Exported from the Pruning Lab app."] if pm is not None else
                ["Nothing was pruned in this session: this report shows the dense model."],
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
