"""Export: reloadable pruned checkpoints, ONNX checked against PyTorch, recipes, CSV, HTML report.

Everything here is headless and writes atomically. A checkpoint is a model directory
(`model.safetensors` + `model.json` with the structural surgery, see `checkpoint.save_model_dir`)
so that it reloads without unpickling code; a zip of that directory is what the app offers for
download. ONNX files are always run once through onnxruntime and compared with PyTorch on the
same input, and the largest difference is reported. Recipes use the format of `pruning-lab prune`
(`pruning_core.cli.prune`), so `pruning-lab prune --recipe FILE` repeats the run. The HTML
report inlines plotly.js once, so it opens with no network.
"""

from __future__ import annotations

import copy
import datetime as _dt
import html
import io
import json
import math
import tempfile
import time
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pruning_core.checkpoint import META_FILE, MODEL_FILE, save_model_dir
from pruning_core.errors import UserError, brief, shown
from pruning_core.fsio import OUTPUT_MARKER, atomic_path, output_dir, to_jsonable, write_json
from pruning_core.layers import main_logits
from pruning_core.models import get_entry
from pruning_core.prune import method_phrase
from pruning_core.spec import InputSpec
from pruning_core.validate import number

__all__ = [
    "FORMATS",
    "OnnxCheck",
    "checkpoint_meta",
    "checkpoint_zip",
    "csv_bytes",
    "export_onnx",
    "finetune_change",
    "finetune_outcome",
    "is_model_dir",
    "is_self_contained",
    "model_card",
    "onnx_bytes",
    "onnx_metadata",
    "pruning_report",
    "read_pruned_dir",
    "report_html",
    "save_checkpoint",
    "write_bytes",
]

FORMATS = ("checkpoint", "onnx", "report")
ONNX_OPSET = 17
# ONNX and PyTorch kernels sum in different orders (and ONNX Runtime folds BatchNorm into the
# convolutions). The tolerance is relative to the logits' scale (max |logit|, at least 1):
# rounding error grows with the magnitudes summed, and an untrained or freshly pruned model can
# have logits in the thousands (timm's efficientnet_b0 differs by 1.4e-4 of them). A wrong
# export differs by the logits' own size.
ONNX_ATOL = 1e-3


# --- checkpoints -------------------------------------------------------------------------------


def checkpoint_meta(
    arch: str,
    arch_kwargs: Mapping[str, Any],
    spec: InputSpec,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `model.json` contents `load_model(dir)` needs (plus `extra` keys such as the recipe)."""
    meta: dict[str, Any] = dict(extra or {})
    meta.update({"arch": arch, "arch_kwargs": dict(arch_kwargs), "spec": spec.to_dict()})
    return meta


def _reference(arch: str, arch_kwargs: Mapping[str, Any]) -> nn.Module:
    return get_entry(arch).builder(**dict(arch_kwargs))


def save_checkpoint(
    out: Path,
    model: nn.Module,
    *,
    arch: str,
    arch_kwargs: Mapping[str, Any],
    spec: InputSpec,
    extra_meta: Mapping[str, Any] | None = None,
    files: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model directory that `load_model(out)` rebuilds without unpickling.

    Args:
        out: Target directory (replaced atomically; see `checkpoint.output_dir`).
        model: The (possibly physically shrunk) model.
        arch, arch_kwargs: Its registry architecture and the arguments of the dense build.
        spec: Its input spec.
        extra_meta: More keys for model.json (recipe, pruning summary...).
        files: Extra JSON files to put beside it (name -> JSON-able), e.g. metrics.json.

    Returns:
        `out`.
    """
    meta = checkpoint_meta(arch, arch_kwargs, spec, extra_meta)
    with output_dir(Path(out)) as tmp:
        save_model_dir(tmp, model, meta, reference=_reference(arch, arch_kwargs))
        for name, doc in (files or {}).items():
            write_json(tmp / _plain_name(name), doc)
    return Path(out)


def _plain_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise UserError(f"not a plain file name: {name!r}")
    return name


def checkpoint_zip(
    model: nn.Module,
    *,
    arch: str,
    arch_kwargs: Mapping[str, Any],
    spec: InputSpec,
    extra_meta: Mapping[str, Any] | None = None,
    files: Mapping[str, Any] | None = None,
    folder: str = "pruned-model",
) -> bytes:
    """The model directory of `save_checkpoint`, zipped in memory (for a download button).

    Unzipped, `folder/` is a model directory that `--model folder` and `load_model` accept.
    """
    with tempfile.TemporaryDirectory(prefix="pruning-lab-export-") as tmp:
        d = save_checkpoint(
            Path(tmp) / folder,
            model,
            arch=arch,
            arch_kwargs=arch_kwargs,
            spec=spec,
            extra_meta=extra_meta,
            files=files,
        )
        return _zip_dir(d, folder)


def _zip_dir(directory: Path, folder: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(directory.iterdir()):
            # The download is the user's own copy: without the marker, no later run replaces it.
            if p.is_file() and p.name != OUTPUT_MARKER:
                zf.write(p, f"{folder}/{p.name}")
    return buf.getvalue()


# --- ONNX --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxCheck:
    """How an exported ONNX file compared with PyTorch on the same input.

    Attributes:
        max_abs_diff: Largest absolute difference between the two outputs.
        atol: The tolerance it was held to.
        ok: `max_abs_diff <= atol * max(1, max |PyTorch logit|)`.
        batch_size: Images in the check batch.
        input: What the check batch was (`validation images` or `random normal`).
        opset: ONNX opset.
        exporter: `torchscript` or `dynamo`.
        bytes: Size of the ONNX file.
        seconds: Time to export and check.
    """

    max_abs_diff: float
    atol: float
    ok: bool
    batch_size: int
    input: str
    opset: int
    exporter: str
    bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dict(self.__dict__)


def _export_graph(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> str:
    """Export with the TorchScript exporter (fast), falling back to the dynamo one."""
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
    errors = []
    for exporter in ("torchscript", "dynamo"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if exporter == "torchscript":
                    torch.onnx.export(
                        model, (example,), str(path), dynamo=False, input_names=["input"],
                        output_names=["logits"], dynamic_axes=axes, opset_version=opset,
                    )  # fmt: skip
                else:
                    torch.onnx.export(
                        model, (example,), str(path), dynamo=True, input_names=["input"],
                        output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                        external_data=False, verbose=False,
                    )  # fmt: skip
            return exporter
        except Exception as e:  # exporters raise many types; try the other, then report both
            errors.append(f"{exporter}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    raise UserError("this model cannot be exported to ONNX (" + " | ".join(errors) + ")")


def onnx_metadata(spec: InputSpec) -> dict[str, str]:
    """What an ONNX file needs to say so raw images can be fed correctly (`metadata_props`).

    Keys: `preprocessing` (the recipe in words), `input_layout` (`NCHW`), `input_size`
    (pixels, square), `input_channels`, `channel_order` (`grayscale` or `RGB`), `pixel_scale`
    (`1/255`: 8-bit pixels to [0, 1] first), `mean` and `std` (JSON lists, per channel),
    `num_classes`, `class_names` (JSON list), `producer`.

    Args:
        spec: The model's input spec.

    Returns:
        String keys to string values (ONNX metadata holds strings only).
    """
    order = {1: "grayscale", 3: "RGB"}.get(spec.channels, f"{spec.channels} channels")
    return {
        "preprocessing": (
            f"float32 {order} image {spec.size}x{spec.size}, NCHW; x = (pixel / 255 - mean) / std "
            f"per channel, mean {_floats(spec.mean)}, std {_floats(spec.std)}"
        ),
        "input_layout": "NCHW",
        "input_size": str(spec.size),
        "input_channels": str(spec.channels),
        "channel_order": order,
        "pixel_scale": "1/255",
        "mean": json.dumps([float(v) for v in spec.mean]),
        "std": json.dumps([float(v) for v in spec.std]),
        "num_classes": str(spec.num_classes),
        "class_names": json.dumps(list(spec.class_names)),
        "producer": "pruning-lab",
    }


def _floats(xs: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in xs) + "]"


def _add_metadata(path: Path, props: dict[str, str]) -> None:
    """Write `props` into the ONNX file's metadata_props (replacing keys of the same name)."""
    import onnx

    m = onnx.load(str(path))
    kept = [p for p in m.metadata_props if p.key not in props]
    del m.metadata_props[:]
    m.metadata_props.extend(kept)
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    m.doc_string = props.get("preprocessing", m.doc_string)
    onnx.save(m, str(path))


def _check_batch(spec: InputSpec, example: torch.Tensor | None, batch_size: int) -> tuple[Any, str]:
    if example is not None:
        return example.detach().float().cpu(), "validation images"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, spec.channels, spec.size, spec.size, generator=g)
    return x, "random normal"


def export_onnx(
    model: nn.Module,
    spec: InputSpec,
    out: Path,
    *,
    example: torch.Tensor | None = None,
    batch_size: int = 8,
    opset: int = ONNX_OPSET,
    atol: float = ONNX_ATOL,
) -> OnnxCheck:
    """Export `model` to ONNX (dynamic batch) and check it with onnxruntime.

    The file carries the input normalisation as ONNX metadata (`onnx_metadata`: mean, std,
    input size, layout, channel order, pixel scale, class names), so whoever feeds it knows
    what the model expects. The file is written atomically, and only when onnxruntime's output matches PyTorch's within
    `atol` on the check batch; otherwise nothing is written and a UserError says by how much.

    Args:
        model: The model (not modified: a CPU copy is exported).
        spec: Its input spec (shape of the check batch).
        out: The `.onnx` file.
        example: The check batch (e.g. validation images, already normalised); random otherwise.
        batch_size: Size of the random check batch.
        opset: ONNX opset.
        atol: Largest accepted difference of the outputs, relative to their scale (the largest
            |logit| of the check batch, at least 1).
    """
    start = time.perf_counter()
    net = copy.deepcopy(model).cpu().eval()
    x, what = _check_batch(spec, example, batch_size)
    out = Path(out)
    with atomic_path(out) as tmp:
        exporter = _export_graph(net, x[:1], tmp, opset)
        _add_metadata(tmp, onnx_metadata(spec))
        diff, scale = _compare(tmp, net, x)
        if not diff <= atol * scale:
            raise UserError(
                f"ONNX output differs from PyTorch by {diff:.3g} (> {atol:g} x {scale:.3g}, "
                "the largest |logit|); not written"
            )
        size = tmp.stat().st_size
    return OnnxCheck(diff, atol, True, int(x.shape[0]), what, opset, exporter, size,
                     time.perf_counter() - start)  # fmt: skip


def _compare(path: Path, model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(max |ONNX - PyTorch|, the scale it is judged on: max |PyTorch logit|, at least 1)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # a check, not a benchmark: stay light on shared machines
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = main_logits(model(x)).numpy()
    if not np.isfinite(want).all():
        raise UserError(
            "the model's own outputs are not finite (inf or NaN) on the check batch, so its "
            "ONNX export cannot be checked; nothing written"
        )
    if got.shape != want.shape:
        raise UserError(f"ONNX output shape {got.shape} differs from PyTorch's {want.shape}")
    d = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    return (d if math.isfinite(d) else math.inf), scale


def onnx_bytes(
    model: nn.Module,
    spec: InputSpec,
    *,
    example: torch.Tensor | None = None,
    atol: float = ONNX_ATOL,
) -> tuple[bytes, OnnxCheck]:
    """`export_onnx` into memory: (file bytes, check) for a download button."""
    with tempfile.TemporaryDirectory(prefix="pruning-lab-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        check = export_onnx(model, spec, path, example=example, atol=atol)
        return path.read_bytes(), check


# --- CSV and plain files ------------------------------------------------------------------------


def csv_bytes(df: pd.DataFrame) -> bytes:
    """A DataFrame as UTF-8 CSV (no index)."""
    return df.to_csv(index=False).encode("utf-8")


def write_bytes(path: Path, data: bytes) -> Path:
    """Write bytes atomically (temp file + rename)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a file name")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


# --- HTML report -------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#1f2933;padding:0 1rem}
h1{margin-bottom:.2rem} .sub{color:#616e7c;margin-top:0}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;font-size:.9rem}
th,td{border-bottom:1px solid #e4e7eb;padding:.3rem .7rem;text-align:left}
th{background:#f5f7fa} .cap{color:#52606d;font-size:.9rem;margin:.2rem 0 1.5rem}
.kpis{display:flex;flex-wrap:wrap;gap:1rem;margin:1rem 0}
.kpi{background:#f5f7fa;border-radius:8px;padding:.6rem 1rem;min-width:9rem}
.kpi b{display:block;font-size:1.3rem} .note{color:#52606d;font-size:.85rem}
.outcome{font-size:1rem;padding:.5rem .8rem;border-left:4px solid #52606d;background:#f5f7fa}
.outcome.worse{border-color:#b42318;background:#fef3f2;color:#7a271a;font-weight:600}
"""


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, Mapping | list | tuple):
        return json.dumps(to_jsonable(v, lenient=True, finite=False))
    return str(v)


def _kv_table(d: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in d.items()
    )
    return f"<table>{rows}</table>"


def report_html(
    title: str,
    *,
    kpis: Mapping[str, str] | None = None,
    figures: Sequence[tuple[Any, str]] = (),
    metrics: Mapping[str, Any] | None = None,
    tables: Sequence[tuple[str, pd.DataFrame]] = (),
    model_card: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    subtitle: str = "",
    outcome: str = "",
    worse: bool = False,
) -> str:
    """A self-contained HTML report: plotly.js inlined once, no network needed to open it.

    Args:
        title: Page title.
        kpis: Headline numbers (label -> formatted value).
        figures: (plotly figure, caption) pairs, in order.
        metrics: The run's metrics (scalars; nested values are shown as JSON).
        tables: (heading, DataFrame) pairs.
        model_card: The model card (name, data, accuracy, seed, command...).
        notes: Plain sentences (what was measured, on what).
        subtitle: A line under the title.
        outcome: A sentence shown under the headline numbers, set off from the notes (what
            fine-tuning did to accuracy).
        worse: Show `outcome` as bad news (red).
    """
    e = html.escape
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="sub">{e(subtitle)}{" · " if subtitle else ""}generated {stamp} by Pruning Lab</p>',
    ]
    if kpis:
        parts.append('<div class="kpis">')
        parts += [f'<div class="kpi">{e(str(k))}<b>{e(str(v))}</b></div>' for k, v in kpis.items()]
        parts.append("</div>")
    if outcome:
        parts.append(f'<p class="outcome{" worse" if worse else ""}">{e(outcome)}</p>')
    for n in notes:
        parts.append(f'<p class="note">{e(n)}</p>')
    from pruning_core import plots  # plotly only when a report is written

    inlined = False
    for fig, caption in figures:
        # plotly.js (about 4 MB) goes in once, before the first figure; the rest reuse it.
        fig.update_layout(template=plots.REPORT_TEMPLATE)  # no Streamlit theme to style it
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=not inlined,
            include_mathjax=False,
            config={"displaylogo": False, "responsive": True},
        )
        inlined = True
        parts.append(f"<section>{div}<p class='cap'>{e(caption)}</p></section>")
    if metrics:
        parts.append("<h2>Metrics</h2>")
        parts.append(_kv_table({k: v for k, v in metrics.items() if k != "curve"}))
    for heading, df in tables:
        parts.append(f"<h2>{e(heading)}</h2>")
        parts.append(df.to_html(index=False, escape=True, na_rep="-", float_format="{:.4g}".format))
    if model_card:
        parts.append("<h2>Model card</h2>")
        parts.append(_kv_table(model_card))
    parts.append("</body></html>")
    return "\n".join(parts)


def is_self_contained(page: str) -> bool:
    """True when the HTML loads no script, style or frame from the network."""
    low = page.lower()
    return not any(
        s in low
        for s in ('<script src="http', "<script src='http", '<link rel="stylesheet" href="http',
                  "<iframe src=\"http")
    )  # fmt: skip


# metrics.json fields the report and exports read, by the type each must have.
_NUMBER_FIELDS = (
    "target_ratio", "sparsity", "dense_accuracy", "pruned_accuracy", "regularized_accuracy",
    "finetuned_accuracy", "final_accuracy", "accuracy", "params_before", "params_after",
    "finetune_kept_epoch",
    "macs_before", "macs_after", "size_bytes_before", "size_bytes_after", "seconds",
)  # fmt: skip
_TEXT_FIELDS = (
    "model", "arch", "dataset", "method", "criterion", "granularity", "scope", "schedule",
    "stage",
)  # fmt: skip
_MAX_METRICS_BYTES = 8 << 20


def read_pruned_dir(directory: Path) -> dict[str, Any]:
    """The metrics.json of a `pruning-lab prune` output (empty dict when there is none).

    The file is data, not instructions, and it is checked like any input: the fields the report
    reads must have their types (numbers finite and bounded, texts short), lists and mappings
    their shapes.

    Raises:
        UserError: Unreadable or malformed JSON, or a field of the wrong type (named).
    """
    p = Path(directory) / "metrics.json"
    if not p.is_file():
        return {}
    try:
        if p.stat().st_size > _MAX_METRICS_BYTES:
            raise UserError(f"metrics.json in {directory} is over {_MAX_METRICS_BYTES >> 20} MiB")
        doc = json.loads(p.read_text())
    except (ValueError, RecursionError) as e:  # JSON, encoding, over-long integers, nesting
        raise UserError(f"corrupt metrics.json in {directory}: {shown(str(e))}") from None
    if not isinstance(doc, dict):
        return {}
    where = f"{directory}/metrics.json"
    for k in _NUMBER_FIELDS:
        v = doc.get(k)
        if v is not None:
            doc[k] = number(v, f"{where}: {k}", lo=-1e18, hi=1e18)
    for k in _TEXT_FIELDS:
        v = doc.get(k)
        if v is not None and (not isinstance(v, str) or len(v) > 1000):
            raise UserError(f"{where}: {k} must be a short text, got {brief(v)}")
    for k, kind in (("layer_sparsity", dict), ("curve", list), ("notes", list), ("history", list)):
        v = doc.get(k)
        if v is not None and not isinstance(v, kind):
            raise UserError(f"{where}: {k} must be a {kind.__name__}, got {brief(v)}")
    for layer, v in (doc.get("layer_sparsity") or {}).items():
        number(v, f"{where}: layer_sparsity[{shown(layer, 40)}]", lo=0, hi=1)
    if any(not isinstance(point, dict) for point in doc.get("curve") or []):
        raise UserError(f"{where}: curve must be a list of objects")
    return doc


def is_model_dir(directory: Path) -> bool:
    """True when `directory` holds a model written by Pruning Lab."""
    d = Path(directory)
    return (d / MODEL_FILE).is_file() and (d / META_FILE).is_file()


def _stage_frame(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """A two-point accuracy-vs-sparsity frame (dense at 0, the run at its sparsity)."""
    from pruning_core.experiments import method_label

    method = str(metrics.get("method") or "pruned")
    if metrics.get("method") and isinstance(metrics.get("granularity"), str):
        method = method_label(method, metrics["granularity"])
    dense = metrics.get("dense_accuracy")
    ft = metrics.get("finetuned_accuracy")
    rows = [
        {"method": method, "sparsity": 0.0, "accuracy": dense,
         "finetuned_accuracy": dense if ft is not None else math.nan},
        {"method": method, "sparsity": metrics.get("sparsity"),
         "accuracy": metrics.get("pruned_accuracy"),
         "finetuned_accuracy": ft if ft is not None else math.nan},
    ]  # fmt: skip
    df = pd.DataFrame(rows).astype({"sparsity": float, "accuracy": float})
    df["dense_accuracy"] = dense
    return df


def _pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.2%}"


def _accuracy_of(v: Any) -> float | None:
    """An accuracy from metrics, or None when absent or not a finite number."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def finetune_change(metrics: Mapping[str, Any]) -> float | None:
    """Fine-tuned minus pruned accuracy in points of percentage, to 0.01 (signed; negative:
    fine-tuning made it worse), or None when no fine-tune was measured."""
    before = _accuracy_of(metrics.get("pruned_accuracy"))
    after = _accuracy_of(metrics.get("finetuned_accuracy"))
    if before is None or after is None:
        return None
    return round((after - before) * 100, 2)


def finetune_outcome(metrics: Mapping[str, Any]) -> str | None:
    """What fine-tuning did to accuracy, in words, for the report and the Fine-tune page.

    A fine-tune that lowered accuracy says so first ("Fine-tuning lowered accuracy by 1.40
    points"), never hidden behind the final number; with best-epoch keeping
    (`TrainConfig.keep_best`, recorded as `finetune_kept_epoch`) it says which epoch was kept,
    and that the validation split chose it.

    Args:
        metrics: The `metrics.json` layout (`pruned_accuracy`, `finetuned_accuracy`, optional
            `finetune_kept_epoch` and `recipe`).

    Returns:
        One or two sentences, or None when no fine-tune was measured.
    """
    change = finetune_change(metrics)
    if change is None:
        return None
    before = float(metrics["pruned_accuracy"])
    after = float(metrics["finetuned_accuracy"])
    if change < 0:
        text = (
            f"Fine-tuning lowered accuracy by {-change:.2f} points: {after:.2%} after "
            f"fine-tuning, {before:.2%} right after pruning."
        )
    elif change > 0:
        text = (
            f"Fine-tuning raised accuracy by {change:.2f} points: {after:.2%} after "
            f"fine-tuning, {before:.2%} right after pruning."
        )
    else:
        text = f"Fine-tuning left accuracy unchanged at {after:.2%} (as right after pruning)."
    kept = metrics.get("finetune_kept_epoch")
    if isinstance(kept, int) and not isinstance(kept, bool):
        recipe = metrics.get("recipe")
        settings = recipe.get("settings", {}) if isinstance(recipe, Mapping) else {}
        epochs = settings.get("finetune_epochs") if isinstance(settings, Mapping) else None
        of = f" of {epochs}" if isinstance(epochs, int) and epochs >= kept else ""
        if kept == 0:
            text += (
                " No epoch beat the model it started from on the validation split, so the "
                "fine-tune kept the best epoch: epoch 0, the weights before fine-tuning."
            )
        else:
            text += (
                f" The fine-tune kept the best epoch by validation accuracy: epoch {kept}{of}"
                " (chosen on the validation split, so that split's accuracy is a slightly "
                "optimistic estimate)."
            )
    return text


def pruning_report(
    metrics: Mapping[str, Any],
    *,
    title: str = "Pruning report",
    sweep: pd.DataFrame | None = None,
    latency: pd.DataFrame | None = None,
    latency_note: str = "",
    model_card: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    per_class: pd.DataFrame | None = None,
    companions: pd.DataFrame | None = None,
) -> str:
    """The stakeholder report of one pruned model as self-contained HTML.

    Args:
        metrics: The run's metrics in the `pruning-lab prune` metrics.json layout (`model`,
            `dataset`, `method`, `granularity`, `sparsity`, `dense_accuracy`, `pruned_accuracy`,
            `finetuned_accuracy`, `params_before/after`, `macs_before/after`, `size_bytes_*`,
            optional `layer_sparsity` and `curve`).
        title: Report title.
        sweep: An `experiments.sweep` frame; without one the accuracy plot shows the run's own
            points (dense at 0, pruned and fine-tuned at the measured sparsity).
        latency: A `tradeoffs.latency_vs_sparsity` frame (plotted against sparsity) or a
            `latency.benchmark_backends` frame (bars per backend).
        latency_note: How the latency was measured (`LatencyProtocol.describe()`: device,
            threads, batch size, warm-up, repeats).
        model_card: The model card.
        notes: More sentences on what was measured.
        per_class: A `per_class.per_class_change` frame of this model against dense; None:
            the metrics' `per_class` rows when they have them (ratio-strategy runs), else no
            per-class section.
        companions: A `companions.compare_companions` frame (the Trade-offs page's one view):
            a companion trade-offs section with its figure (accuracy against size and
            latency, eager and ONNX Runtime, Pareto fronts) and table; its `attrs["protocol"]`
            and `n_val` say how it was measured.
    """
    from pruning_core import plots
    from pruning_core.per_class import change_from_records, change_headline

    m = dict(metrics)
    if sweep is not None and {"method", "granularity"} <= set(sweep.columns) and len(sweep):
        # Named as `experiments.sweep` names them now, a CSV from before included.
        from pruning_core.experiments import method_label

        sweep = sweep.assign(method=[method_label(str(a), str(g)) for a, g in
                                     zip(sweep["method"], sweep["granularity"], strict=True)])  # fmt: skip
    if per_class is None and isinstance(m.get("per_class"), list) and m["per_class"]:
        per_class = change_from_records(m["per_class"])
    figures: list[tuple[Any, str]] = []
    acc_df = sweep if sweep is not None and len(sweep) else _stage_frame(m)
    what = "sweep: one fresh pruned copy per point" if sweep is not None and len(sweep) else (
        "this run: dense at 0, pruned (solid) and fine-tuned (dashed) at its measured sparsity"
    )  # fmt: skip
    figures.append(
        (plots.accuracy_sparsity_figure(acc_df, subtitle=f"validation split of {m.get('dataset')}"),
         f"Accuracy vs sparsity ({what}).")
    )  # fmt: skip
    if latency is not None and len(latency):
        if "ratio" in latency:
            fig = plots.latency_sparsity_figure(latency, subtitle=latency_note)
        else:
            ok = latency[latency["status"] == "ok"].rename(columns={"backend": "label"})
            fig = plots.latency_figure(ok, f"Latency by backend<br><sup>{latency_note}</sup>")
        figures.append((fig, "Latency measured on this machine: median of repeated timed runs "
                        "after warm-up, bars from the 10th to the 90th percentile. Masked zeros "
                        "run the same dense kernels, so only shrunk models or sparse kernels can "
                        "be faster. " + latency_note))  # fmt: skip
    ls = m.get("layer_sparsity")
    if isinstance(ls, Mapping) and ls:
        df = pd.DataFrame({"layer": list(ls), "sparsity": [float(v) for v in ls.values()]})
        figures.append((plots.layer_sparsity_figure(df), "Share of weights removed per layer."))
    curve = m.get("curve")
    if isinstance(curve, list) and curve and isinstance(curve[0], Mapping) and "step" in curve[0]:
        cdf = pd.DataFrame(curve)
        if "loss" in cdf:
            figures.append((plots.training_curves_figure(cdf), "Fine-tuning curve."))
    if per_class is not None and len(per_class):
        figures.append((
            plots.per_class_change_figure(per_class, subtitle=f"validation split of "
                                          f"{m.get('dataset')}, pruned model against dense"),
            f"Which classes pay for pruning (Hooker et al. 2019, \"What do compressed deep neural "
            f"networks forget?\"): accuracy change per class in points, worst first. "
            f"{change_headline(per_class)}; small classes move in steps of 100/n points.",
        ))  # fmt: skip
    if companions is not None and len(companions):
        from pruning_core.plots_companions import companions_figure

        a = companions.attrs
        how = str(a.get("protocol", "")) + (
            f"; accuracy on {int(a['n_val']):,} validation images" if "n_val" in a else ""
        )
        figures.append((
            companions_figure(companions, subtitle=how),
            "Pruning and its companions on this model, each built from the dense model and "
            "measured: accuracy through the runtime that runs it, size of the saved file, and "
            "latency against dense eager PyTorch timed in the same rounds (no measurable "
            "difference where the p10-p90 ranges overlap). Dashed: the Pareto fronts. " + how,
        ))  # fmt: skip
    kpis = {
        "Sparsity": _pct(m.get("sparsity")),
        "Dense accuracy": _pct(m.get("dense_accuracy")),
        "Pruned accuracy": _pct(m.get("pruned_accuracy")),
        "Fine-tuned accuracy": _pct(m.get("finetuned_accuracy")),
    }
    change = finetune_change(m)
    if change is not None:
        kpis["Fine-tuning changed accuracy by"] = f"{change:+.2f} points"
    if m.get("params_before") and m.get("params_after") is not None:
        kpis["Non-zero params"] = f"{m['params_before']:,} → {m['params_after']:,}"
    if m.get("macs_before") and m.get("macs_after") is not None:
        kpis["MACs / image"] = f"{m['macs_before']:,} → {m['macs_after']:,}"
    how = (
        method_phrase(m.get("method"), m.get("granularity"))
        if m.get("method")
        else "dense, not pruned"
    )
    subtitle = f"{m.get('model')} on {m.get('dataset')}: {how}"
    tables = []
    if sweep is not None and len(sweep):
        tables.append(("Sweep", sweep))
    if latency is not None and len(latency):
        cols = [c for c in ("ratio", "sparsity", "backend", "status", "median_ms", "p10_ms",
                            "p90_ms", "vs_dense", "batch_size", "threads", "device", "reason")
                if c in latency]  # fmt: skip
        tables.append(("Latency", latency[cols]))
    if per_class is not None and len(per_class):
        tables.append(("Per-class accuracy change against dense (points)",
                       per_class[["class", "n", "dense", "pruned", "change"]]))  # fmt: skip
    if companions is not None and len(companions):
        cols = [c for c in ("label", "runtime", "status", "accuracy", "size_bytes", "params",
                            "macs", "median_ms", "p10_ms", "p90_ms", "vs_dense", "pareto_size",
                            "pareto_latency", "reason") if c in companions]  # fmt: skip
        tab = companions[cols].copy()
        for c in ("size_bytes", "params", "macs"):  # thousands separators, not 6.058e+05
            if c in tab:
                tab[c] = [f"{float(v):,.0f}" if pd.notna(v) else "-" for v in tab[c]]
        if "accuracy" in tab:
            tab["accuracy"] = [f"{float(v):.2%}" if pd.notna(v) else "-" for v in tab["accuracy"]]
        tables.append(("Companion trade-offs (one row per variant and runtime)", tab))
    flat = {k: v for k, v in m.items()
            if k not in ("curve", "layer_sparsity", "recipe", "per_class")}  # fmt: skip
    if isinstance(m.get("recipe"), Mapping):
        flat["recipe"] = m["recipe"].get("settings", m["recipe"])
    return report_html(
        title, kpis=kpis, figures=figures, metrics=flat, tables=tables, model_card=model_card,
        notes=[*notes, "Accuracies are top-1 on the dataset's held-out validation split; every "
               "number was measured, none is estimated."], subtitle=subtitle,
        outcome=finetune_outcome(m) or "", worse=change is not None and change < 0,
    )  # fmt: skip


def model_card(ref: str) -> dict[str, Any] | None:
    """The model card of a sample model (by registry name) or of a model directory, if any."""
    from pruning_core.models import get_entry, sample_models_dir

    path = Path(ref)
    try:
        if not path.is_dir() and get_entry(ref).sample:
            path = sample_models_dir() / ref
    except UserError:
        return None
    meta = path / META_FILE
    if not meta.is_file():
        return None
    try:
        card = json.loads(meta.read_text()).get("card")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    return card if isinstance(card, dict) else None
