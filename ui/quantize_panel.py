"""The Export page's "Quantize to int8" section: the session's model (the applied one, or the
dense one when nothing is applied) quantized by ONNX Runtime in a background job, measured
against float, and offered as a quantized model directory (zip).

The job (`quantize_job`, no Streamlit: it runs in the runner's thread) writes into a temporary
directory of its own (`quantize.quantize`), measures accuracy through ONNX Runtime against the
float model, times float and int8 in ONNX Runtime at batch 1 and 32 with the app's protocol
(`latency.batch_sweep`, interleaved, p10/p90), zips the directory and deletes it: nothing is
written into a user's folder. Its result is kept in the session's `quantize` slot
(`ui.jobs_panel`: `measurement_panel`, `measurement_result`), with the version of the model it
came from, so it survives page changes and is shown only for that selection and model.
"""

from __future__ import annotations

import copy
import io
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
from torch import nn

from pruning_core.data import DataBundle
from pruning_core.errors import UserError
from pruning_core.fsio import OUTPUT_MARKER
from pruning_core.jobs import JobContext
from pruning_core.latency import PROTOCOL, batch_sweep
from pruning_core.layers import example_input
from pruning_core.ort import to_ort
from pruning_core.plots_runtime import int8_figure
from pruning_core.quantize import (
    INT8_ACCURACY_TOLERANCE,
    QUANT_META_FILE,
    QUANT_ONNX_FILE,
    QuantizeConfig,
    int8_verdict,
    quantize,
)
from pruning_core.spec import InputSpec
from ui.jobs_panel import job_runner, measurement_panel, measurement_result
from ui.state import remember
from ui.texts_runtime import QUANT_EXPLAINED
from ui.tradeoff_jobs import Measurement

__all__ = [
    "QUANT_BATCHES",
    "SLOT",
    "quantize_job",
    "quantize_panel",
    "zip_quantized",
]

SLOT = "quantize"
# Batches float and int8 are timed at in ONNX Runtime: one image (a request) and a batch.
QUANT_BATCHES = (1, 32)
_MODE_LABELS = {
    "static": "static (calibrated on the calibration split)",
    "dynamic": "dynamic (no calibration)",
}


def zip_quantized(directory: Path, folder: str) -> bytes:
    """The quantized model directory (`model.onnx`, `quantized.json`) zipped under `folder/`,
    without the marker that lets Pruning Lab replace its own output folders (the download is the
    user's own copy)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(Path(directory).iterdir()):
            if p.is_file() and p.name != OUTPUT_MARKER:
                zf.write(p, f"{folder}/{p.name}")
    return buf.getvalue()


def quantize_job(
    model: nn.Module,
    spec: InputSpec,
    data: DataBundle,
    mode: str,
    *,
    source: str,
    folder: str,
    version: str,
    extra_meta: Mapping[str, Any] | None = None,
    val_limit: int | None = None,
) -> Measurement:
    """Quantize a copy of `model` to int8 (`quantize.quantize`), time float and int8 in ONNX
    Runtime at `QUANT_BATCHES`, and zip the quantized directory.

    Args:
        model: The float model (copied now: the job never touches the session's).
        spec: Its input spec.
        data: Calibration split (static) and validation split (accuracy).
        mode: `static` or `dynamic`.
        source: What the float model is (a registry name or path), recorded in quantized.json.
        folder: The folder name inside the zip.
        version: The session's model version the result belongs to.
        extra_meta: More keys for quantized.json.
        val_limit: Validation images evaluated (None: all).

    Returns:
        The job; it returns `{"frame": latency rows, "attrs": {...}}` with the accuracies,
        agreement, sizes, the protocol in words and `zip` (the directory's bytes).

    Raises:
        UserError: An unknown mode or a bad limit.
    """
    config = QuantizeConfig(mode=mode, val_limit=val_limit)
    net = copy.deepcopy(model).cpu().eval()

    def run(ctx: JobContext) -> dict[str, Any]:
        tmp = Path(tempfile.mkdtemp(prefix="pruning-lab-int8-app-"))
        try:
            ctx.report(0.05, f"exporting and quantizing ({mode})")
            r = quantize(net, spec, data, tmp / "int8", config, source=source,
                         extra_meta=extra_meta)  # fmt: skip
            ctx.check_cancelled()
            ctx.report(0.6, "timing float and int8 in ONNX Runtime")
            x = example_input(net, spec, QUANT_BATCHES[0], random=True)
            float_ort = to_ort(net, x, spec=spec, threads=PROTOCOL.threads)
            # batch_sweep's reference row ("dense") times the float graph in ONNX Runtime here,
            # interleaved with the int8 one, so `vs_dense` compares the two in one runtime.
            sweep = batch_sweep(
                r.model, lambda b: example_input(net, spec, b, random=True),
                batch_sizes=QUANT_BATCHES, backends=("dense", "onnxruntime"), dense=float_ort,
                protocol=PROTOCOL,
            )  # fmt: skip
            ctx.report(0.95, "zipping the quantized model")
            blob = zip_quantized(r.out, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        ok = sweep[sweep["status"] == "ok"]
        frame = pd.DataFrame({
            "model": ["float" if b == "dense" else "int8" for b in ok["backend"]],
            "batch_size": ok["batch_size"].astype(int),
            "median_ms": ok["median_ms"], "p10_ms": ok["p10_ms"], "p90_ms": ok["p90_ms"],
            "vs_float": ["the reference" if b == "dense" else v
                         for b, v in zip(ok["backend"], ok["vs_dense"], strict=True)],
        })  # fmt: skip
        not_timed = [f"{row['backend']}: {row['reason']}" for _, row in
                     sweep[sweep["status"] != "ok"].iterrows()]  # fmt: skip
        attrs = {
            "version": version, "mode": mode, "source": source,
            "float_accuracy": r.float_accuracy, "int8_accuracy": r.accuracy,
            "top1_agreement": r.top1_agreement, "max_abs_diff": r.max_abs_diff,
            "logit_scale": r.logit_scale, "within_tolerance": r.within_tolerance,
            "n_val": r.n_val, "n_compared": r.n_compared, "float_bytes": r.float_size_bytes,
            "int8_bytes": r.size_bytes, "quantize_seconds": r.seconds,
            "protocol": PROTOCOL.with_(batch_sizes=QUANT_BATCHES).describe(),
            "not_timed": not_timed, "zip": blob, "zip_name": f"{folder}.zip",
        }  # fmt: skip
        ctx.report(1.0, "done")
        return {"frame": frame.to_dict("list"), "attrs": attrs}

    settings = {"mode": mode, "source": source, "val_limit": val_limit}
    return Measurement(run, f"int8 {mode} quantization", settings)


def _start(build: Any, selection: tuple[str, str]) -> None:
    """The button's callback: queue the job in the `quantize` slot (not recorded as a run: the
    run store has no quantization kind, and the zip is not a metric)."""
    ss = st.session_state
    try:
        m = build()
        job = job_runner().submit(m.fn, name=m.name, kind="sweep", record=False)
    except UserError as e:
        ss[f"tradeoff_{SLOT}_refused"] = str(e)
        return
    ss[f"tradeoff_{SLOT}_job"] = job.id
    ss[f"tradeoff_{SLOT}_for"] = tuple(selection)
    ss[f"tradeoff_{SLOT}_error"] = None
    ss[f"tradeoff_{SLOT}_refused"] = None
    remember()


def quantize_panel(
    model: nn.Module,
    spec: InputSpec,
    data: DataBundle,
    *,
    selection: tuple[str, str],
    version: str,
    what: str,
    stem: str,
    cli_model: str,
    extra_meta: Mapping[str, Any] | None = None,
    val_limit: int | None = None,
) -> None:
    """The int8 section: mode, a button that queues the job, then the figure, the verdict, the
    download and the explanation.

    Args:
        model: The session's model (applied, or dense).
        spec: Its input spec.
        data: The selected dataset.
        selection: The (model, dataset) picked.
        version: The session's model version (a result of another one is not shown).
        what: The model in words (`your pruned model`, `the dense model`).
        stem: The file-name stem of the exports.
        cli_model: What `pruning-lab quantize` is given for the same model (the registry name,
            or the checkpoint's folder).
        extra_meta: More keys for quantized.json.
        val_limit: Validation images evaluated (None: all).
    """
    st.subheader("Quantize to int8")
    left, right = st.columns([3, 2])
    with right:
        st.markdown(QUANT_EXPLAINED)
    with left:
        mode = st.radio(
            "Mode", list(_MODE_LABELS), format_func=_MODE_LABELS.__getitem__,
            key="export_quant_mode", persist_state="session", horizontal=True,
            help="Static fixes every activation's int8 range once on the calibration split (512 "
            "images) and runs int8 kernels throughout; dynamic quantizes weights only ahead of "
            "time and measures activation ranges on every call (no data needed; slow for "
            "convolutions on CPUs).",
        )  # fmt: skip
        st.button(
            f"Quantize {what} to int8", key="export_quantize", type="primary",
            # The mode is read from the session when the callback runs, not from this run's
            # `mode`: a click that interrupts the rerun a new choice started runs the callback
            # of the run before, whose `mode` is the old choice.
            on_click=_start, args=(lambda: quantize_job(
                model, spec, data, str(st.session_state.get("export_quant_mode", mode)),
                source=selection[0], folder=f"{stem}-int8",
                version=version, extra_meta=extra_meta, val_limit=val_limit,
            ), selection),
            help="Runs in the background (seconds on the sample models): exports to ONNX, "
            "quantizes with ONNX Runtime, measures accuracy through ONNX Runtime against the "
            "float model, and times both in ONNX Runtime.",
        )  # fmt: skip
    measurement_panel(SLOT, selection)
    res = measurement_result(SLOT, selection)
    if res is None or res["attrs"].get("version") != version:
        st.caption(
            "Not quantized yet" + (" for this model" if res is not None else "") + ": the "
            "result shows int8 against float (accuracy, size, latency) and offers the int8 "
            "model as a download."
        )
        return
    a = res["attrs"]
    df = res["df"]
    sub = (
        f"{a['mode']} int8; accuracy on {int(a['n_val']):,} validation images; latency: "
        f"{a['protocol']}"
    )
    fig = int8_figure(
        float_accuracy=float(a["float_accuracy"]), int8_accuracy=float(a["int8_accuracy"]),
        tolerance=INT8_ACCURACY_TOLERANCE, float_bytes=int(a["float_bytes"]),
        int8_bytes=int(a["int8_bytes"]), latency=df, title=f"Float vs int8: {what}",
        subtitle=sub,
    )  # fmt: skip
    st.plotly_chart(fig, key="export_quant_chart")
    ok, words = int8_verdict(a)
    (st.success if ok else st.warning)(words)
    for line in a.get("not_timed") or []:
        st.caption(f"Not timed: {line}")
    blob = a["zip"]
    st.download_button(
        f"Download the int8 model ({len(blob) / 1024:,.0f} KiB zip)", blob,
        str(a.get("zip_name", f"{stem}-int8.zip")), "application/zip", key="export_dl_int8",
    )  # fmt: skip
    st.caption(
        f"A folder with `{QUANT_ONNX_FILE}` (the int8 graph, input normalisation in its "
        f"metadata) and `{QUANT_META_FILE}` (mode, source, measured accuracy, the graph's "
        "SHA-256). Float accuracy is the PyTorch model's, int8 accuracy is measured through "
        "ONNX Runtime on the same images; latency compares both graphs in ONNX Runtime. "
        f"`pruning-lab quantize {cli_model} --dataset {selection[1]} --mode {a['mode']} --out "
        "DIR` does the same from the command line"
        + (" (the checkpoint above, unzipped)." if cli_model != selection[0] else ".")
    )
