"""Int8 quantization of a (pruned) model with ONNX Runtime's quantizer, measured, not assumed.

The model is exported to ONNX (`export.export_onnx`: checked against PyTorch), pre-processed
(`onnxruntime.quantization.shape_inference.quant_pre_process`: ONNX shape inference and graph
optimisation), then quantized to int8 by `onnxruntime.quantization`:

- `dynamic` (`quantize_dynamic`): weights int8 ahead of time, activations quantized on the fly
  per call from their own range; needs no data. ONNX Runtime writes integer operators
  (`MatMulInteger`, `ConvInteger`); its CPU kernels for `ConvInteger` are slow, so on CNNs
  dynamic int8 is slower than float (measured on shapes-resnet, batch 32, 1 thread: 6x slower
  than the float graph in ONNX Runtime); it suits Linear-heavy models.
- `static` (`quantize_static`, QDQ format): activation ranges are calibrated once (min/max) on
  the calibration split (`CalibrationDataReader` over `calibration.CALIB_BATCH_SIZE` batches),
  every quantized tensor gets QuantizeLinear/DequantizeLinear pairs, which ONNX Runtime fuses
  into int8 kernels. Weights per output channel where the operator allows (`per_channel`).
  Activations uint8 and weights int8 (U8S8) by default: ONNX Runtime's x86 int8 GEMMs are
  built for U8S8 (VPMADDUBSW / VNNI); S8S8 QDQ was measured 2.7x slower on shapes-resnet.

Why ONNX Runtime's quantizer is the default (Microsoft, `onnxruntime.quantization`; it is
already a dependency): it quantizes the exported graph, the artefact that is deployed, so the
accuracy measured here through `onnxruntime.InferenceSession` is the deployed model's; it
covers convolutions and Linear layers alike on CPU (and the CUDA execution provider); and it
needs no compiler. PyTorch's eager `torch.ao.quantization` is deprecated in favour of torchao and
the PT2E flow, whose CPU int8 path needs `torch.compile` with the Inductor backend and gives a
PyTorch program, not a file to ship.

Accuracy is measured through the int8 runtime on the validation split (`evaluate` on the
`QuantizedModel`), beside the float model's, with the top-1 agreement and the largest logit
difference between the two. The tolerance `quantize` states (and the tests hold every sample
model to): top-1 accuracy within `INT8_ACCURACY_TOLERANCE` (2 points) of float, top-1 agreement
at least `INT8_MIN_AGREEMENT` (0.95), largest |int8 - float logit| at most `INT8_LOGIT_RTOL`
(0.25) of the largest |float logit|. Measured on the sample models (2000 validation images,
static): shapes-vit agrees with float on 98.4% of the compared images, accuracy 0.8965 against
0.899; shapes-resnet 99.8%, 0.9705 against 0.9705.

A quantized model directory (`save_quantized`, written by `quantize`) holds `model.onnx` (the
int8 graph, the input normalisation in its metadata as `export.onnx_metadata` writes it) and
`quantized.json` (format, spec, normalisation, source model, mode, settings, measured accuracy,
the graph's SHA-256). `load_quantized` reopens it as a `QuantizedModel` (an `ort.OrtModule`)
whose outputs equal those before saving, bit for bit (the same graph, execution provider and
threads).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pruning_core.calibration import calibration_batches
from pruning_core.checkpoint import (
    QUANT_META_FILE,
    QUANT_ONNX_FILE,
    is_model_zip,
    is_quantized_dir,
    read_zipped_meta,
    unzipped_model,
)
from pruning_core.errors import UserError, first_line, shown
from pruning_core.evaluate import EvalResult, evaluate, predict_logits
from pruning_core.fsio import check_output_dir, output_dir, write_json
from pruning_core.ort import OrtModule
from pruning_core.spec import InputSpec

__all__ = [
    "INT8_ACCURACY_TOLERANCE",
    "INT8_LOGIT_RTOL",
    "INT8_MIN_AGREEMENT",
    "QUANT_FORMAT",
    "QUANT_META_FILE",
    "QUANT_MODES",
    "QUANT_ONNX_FILE",
    "QuantizeConfig",
    "QuantizeResult",
    "QuantizedModel",
    "accuracy_within_int8_tolerance",
    "int8_sparsity",
    "int8_verdict",
    "is_int8_model",
    "is_quantized_dir",
    "load_quantized",
    "quantize",
    "quantize_onnx",
    "save_quantized",
]

QUANT_MODES = ("dynamic", "static")
QUANT_FORMAT = "pruning-lab-int8-onnx"
QUANT_VERSION = 1
ACTIVATION_TYPES = ("uint8", "int8")
# The stated tolerance of an int8 model against its float original (see the module docstring).
INT8_ACCURACY_TOLERANCE = 0.02
INT8_MIN_AGREEMENT = 0.95
INT8_LOGIT_RTOL = 0.25


def accuracy_within_int8_tolerance(int8_accuracy: float, float_accuracy: float) -> bool:
    """True when two top-1 accuracies (fractions) differ by at most `INT8_ACCURACY_TOLERANCE`.

    Accuracies are whole images over n, so a change of exactly the tolerance (4 of 200 images)
    comes out of the subtraction a few ulps above it; it is within.
    """
    return abs(int8_accuracy - float_accuracy) <= INT8_ACCURACY_TOLERANCE + 1e-9


def int8_verdict(a: Mapping[str, Any]) -> tuple[bool, str]:
    """The one-line verdict of a quantize result against the stated tolerance.

    The same words in the app (Export page) and the CLI (`pruning-lab quantize`).

    Args:
        a: `float_accuracy`, `int8_accuracy`, `top1_agreement`, `max_abs_diff`,
            `logit_scale`, `within_tolerance`, `n_compared` (a `QuantizeResult.to_dict()`
            or the app job's attrs).

    Returns:
        (within the tolerance, the sentence).
    """
    change = 100 * (float(a["int8_accuracy"]) - float(a["float_accuracy"]))
    agree, diff = float(a["top1_agreement"]), float(a["max_abs_diff"])
    scale = float(a["logit_scale"])
    checks = [
        (accuracy_within_int8_tolerance(float(a["int8_accuracy"]), float(a["float_accuracy"])),
         f"accuracy {change:+.2f} points (allowed ±{100 * INT8_ACCURACY_TOLERANCE:g})"),
        (agree >= INT8_MIN_AGREEMENT,
         f"same top-1 class on {agree:.1%} of {int(a['n_compared'])} images "
         f"(at least {INT8_MIN_AGREEMENT:.0%})"),
        (diff <= INT8_LOGIT_RTOL * scale,
         f"largest logit difference {diff:.3g}, {diff / scale:.1%} of the largest float logit "
         f"(at most {INT8_LOGIT_RTOL:.0%})"),
    ]  # fmt: skip
    ok = bool(a.get("within_tolerance")) and all(c for c, _ in checks)
    if ok:
        return True, "Within the stated int8 tolerance: " + "; ".join(t for _, t in checks) + "."
    failed = [t for c, t in checks if not c]
    return False, "Outside the stated int8 tolerance: " + "; ".join(failed) + "."


_MAX_META_BYTES = 1 << 20
_MAX_ONNX_BYTES = 2 << 30


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize.

    Attributes:
        mode: `static` (calibrated, QDQ; the default) or `dynamic` (no data).
        calib_batches: Calibration batches of `CALIB_BATCH_SIZE` (128) images for `static`
            (4: the 512 images of the calibration split).
        per_channel: Weights quantized per output channel (else per tensor).
        activation_type: `uint8` (default, U8S8: ONNX Runtime's fast x86 path) or `int8`
            (S8S8), for `static`.
        val_limit: Evaluate on only the first `val_limit` validation images (None: all).
        compare_images: Validation images on which the int8 and float logits are compared
            (at most `val_limit` of them).

    Raises:
        UserError: An unknown mode or activation type, or a count out of range.
    """

    mode: str = "static"
    calib_batches: int = 4
    per_channel: bool = True
    activation_type: str = "uint8"
    val_limit: int | None = None
    compare_images: int = 512

    def __post_init__(self) -> None:
        if self.mode not in QUANT_MODES:
            raise UserError(
                f"unknown quantization mode '{self.mode}' (choose from dynamic, static)"
            )
        if self.activation_type not in ACTIVATION_TYPES:
            raise UserError(
                f"unknown activation type '{self.activation_type}' (choose from uint8, int8)"
            )
        if not 1 <= self.calib_batches <= 1000:
            raise UserError(f"calibration batches must be 1-1000, got {self.calib_batches}")
        if self.val_limit is not None and self.val_limit < 1:
            raise UserError(f"val_limit must be >= 1, got {self.val_limit}")
        if self.compare_images < 1:
            raise UserError(f"compare_images must be >= 1, got {self.compare_images}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


class QuantizedModel(OrtModule):
    """An int8 ONNX model run by ONNX Runtime, with its spec and directory metadata.

    Called with normalised images `(N, C, H, W)` it returns logits `(N, classes)` on the CPU,
    like the float model; it has no PyTorch parameters (pass `device` to `evaluate`).

    Args:
        onnx: The int8 graph (path or bytes).
        spec: The input spec of the float model it came from.
        meta: The `quantized.json` contents.
        threads: ONNX Runtime intra-op threads.
        device: `cpu` or `cuda`.
    """

    def __init__(
        self,
        onnx: bytes | str | Path,
        spec: InputSpec,
        meta: Mapping[str, Any],
        *,
        threads: int = 1,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(onnx, threads=threads, device=device)
        self.spec = spec
        self.meta = dict(meta)

    @property
    def mode(self) -> str:
        """`dynamic` or `static`."""
        return str(self.meta.get("mode", ""))


# ONNX operators whose second input is a layer's weight (a Linear's or a convolution's).
_WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger")
# Operators that move a constant's elements without changing them: its zeros are the source's.
_MOVES = ("Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")


def int8_sparsity(q: QuantizedModel) -> dict[str, Any]:
    """The sparsity of an int8 model (`terms.SPARSITY_MEANS`), measured on its graph's weights.

    An int8 folder holds an ONNX graph, not PyTorch layers: each Conv/Gemm/MatMul weight is an
    int8 tensor (behind a DequantizeLinear, or the integer input of ConvInteger/MatMulInteger)
    or a float one. A weight is zero when it dequantizes to exactly 0 (its value equals its
    zero point), so int8 rounding can add zeros to the float model's; weights a shrunk model
    no longer has count against the dense architecture `quantized.json` names.

    Args:
        q: The int8 model (its graph and `quantized.json`).

    Returns:
        `sparsity` and `sparsity_from`; `sparsity` None, and `sparsity_from` saying why, when a
        weight is computed in the graph in a way this count does not read.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(q.onnx_bytes).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    made = {o: n for n in graph.node for o in n.output}

    def axis_of(node: Any, default: int) -> int:
        return next((int(a.i) for a in node.attribute if a.name == "axis"), default)

    def along(v: Any, ndim: int, axis: int) -> Any:
        """A per-axis scale or zero point shaped to broadcast over a tensor of `ndim` dims."""
        v = np.asarray(v)
        if v.size == 1:
            return v.reshape(())
        shape = [1] * ndim
        shape[axis % ndim] = -1
        return v.reshape(shape)

    def zeros_of(name: str) -> tuple[int, int] | None:
        """(exact zeros, elements) of a constant weight, or None when it is not one."""
        if name in consts:
            w = consts[name]
            return int(w.size - np.count_nonzero(w)), int(w.size)
        node = made.get(name)
        if node is None:
            return None
        if node.op_type in _MOVES and node.input[0]:
            return zeros_of(node.input[0])
        if node.op_type == "DequantizeLinear" and node.input[0] in consts:
            x = consts[node.input[0]].astype(np.float64)
            scale = consts.get(node.input[1])
            if scale is None:
                return None
            zp = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else 0
            axis = axis_of(node, 1)
            y = (x - along(zp, x.ndim, axis)) * along(scale, x.ndim, axis)
            return int(y.size - np.count_nonzero(y)), int(y.size)
        return None

    zeros = counted = 0
    seen: set[str] = set()
    for n in graph.node:
        if n.op_type not in _WEIGHT_OPS or len(n.input) < 2 or n.input[1] in seen:
            continue
        w = n.input[1]
        got = zeros_of(w)
        if got is None:
            if n.op_type in ("MatMul", "MatMulInteger") and w not in consts and w in made:
                # Two activations multiplied (attention's q k^T): no weight. A weight computed
                # by another operator would land here too, so such a graph is checked below.
                continue
            return {"sparsity": None,
                    "sparsity_from": f"not measured: the int8 graph's {n.op_type} weight {w} is "
                    "computed in the graph, not stored, so its zeros cannot be read"}  # fmt: skip
        seen.add(w)
        if n.op_type in ("ConvInteger", "MatMulInteger") and len(n.input) > 3 and n.input[3]:
            # The integer weight's zero point: a weight equal to it is 0.
            q8 = consts.get(w)
            zp = consts.get(n.input[3])
            if q8 is None or zp is None:
                return {"sparsity": None,
                        "sparsity_from": f"not measured: the zero point of {w} is not stored"}  # fmt: skip
            axis = 0 if n.op_type == "ConvInteger" else -1
            same = q8.astype(np.int64) == along(zp, q8.ndim, axis).astype(np.int64)
            got = (int(np.count_nonzero(same)), int(q8.size))
        zeros += got[0]
        counted += got[1]
    dense, arch = counted, None
    meta = q.meta
    if isinstance(meta.get("arch"), str) and isinstance(meta.get("arch_kwargs"), dict):
        from pruning_core.models import arch_weight_counts

        try:
            dense, arch = (
                sum(arch_weight_counts(meta["arch"], meta["arch_kwargs"]).values()),
                meta["arch"],
            )
        except Exception:  # an architecture that no longer builds: the graph's own count
            dense = counted
    if not dense:
        return {"sparsity": None, "sparsity_from": "not measured: no Linear/Conv weights"}
    removed = max(dense - counted, 0)
    of = f"dense {arch}'s" if arch and dense >= counted else "int8 graph's"
    return {
        "sparsity": round(min(1.0, (zeros + removed) / max(dense, counted)), 6),
        "sparsity_from": "int8 weights that dequantize to exactly 0"
        + (" and removed weights" if removed else "")
        + f", of the {of} {max(dense, counted):,} Linear/Conv weights",
    }


@dataclass(frozen=True)
class QuantizeResult:
    """What `quantize` wrote and measured.

    Attributes:
        out: The quantized model directory.
        path: Its `model.onnx` (the int8 graph).
        mode: `dynamic` or `static`.
        accuracy: Top-1 accuracy of the int8 model, measured through ONNX Runtime on the
            validation split (fraction).
        float_accuracy: The float (PyTorch) model's, same images.
        top1_agreement: Share of compared images where int8 and float predict the same class.
        max_abs_diff: Largest |int8 logit - float logit| on the compared images.
        logit_scale: Largest |float logit| there (at least 1): what `max_abs_diff` is judged on.
        within_tolerance: All three of the stated tolerance (module docstring) hold.
        n_val: Validation images evaluated.
        n_compared: Images whose logits were compared.
        size_bytes: Size of the int8 graph.
        float_size_bytes: Size of the float ONNX graph.
        seconds: Wall time (export, quantization, both evaluations, writing).
        model: The int8 model as measured (not in `to_dict`).
        int8_eval: Its full evaluation (per class, confusion; not in `to_dict`).
        float_eval: The float model's (not in `to_dict`).
    """

    out: Path
    path: Path
    mode: str
    accuracy: float
    float_accuracy: float
    top1_agreement: float
    max_abs_diff: float
    logit_scale: float
    within_tolerance: bool
    n_val: int
    n_compared: int
    size_bytes: int
    float_size_bytes: int
    seconds: float
    model: QuantizedModel = field(repr=False, compare=False)
    int8_eval: EvalResult = field(repr=False, compare=False)
    float_eval: EvalResult = field(repr=False, compare=False)

    @property
    def accuracy_change(self) -> float:
        """int8 minus float accuracy (fraction; negative: int8 is worse)."""
        return self.accuracy - self.float_accuracy

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the model and evaluations left out)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k in ("model", "int8_eval", "float_eval"):
            d.pop(k)
        d.update(out=str(self.out), path=str(self.path), accuracy_change=self.accuracy_change)
        return d


# ----------------------------------------------------------------------------- quantizing


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer logs through the root logger (e.g. that a LayerNorm weight has
    no channel axis for per-channel quantization, which it then quantizes per tensor): keep
    that out of the user's terminal."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(old)


def _calibration_reader(data: Any, spec: InputSpec, batches: int, input_name: str) -> Any:
    """An `onnxruntime.quantization.CalibrationDataReader` over the calibration split."""
    from onnxruntime.quantization import CalibrationDataReader

    feeds = [
        {input_name: x.float().numpy()}
        for x, _ in calibration_batches(data, spec, batches, what="static int8 quantization")
    ]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    return _Reader()


def quantize_onnx(
    float_onnx: Path,
    out: Path,
    config: QuantizeConfig,
    *,
    data: Any = None,
    spec: InputSpec | None = None,
) -> Path:
    """Quantize a float ONNX file to int8 with `onnxruntime.quantization`.

    Args:
        float_onnx: The float graph (one input, e.g. from `export.export_onnx`).
        out: The int8 `.onnx` to write.
        config: Mode, calibration batches, per-channel, activation type.
        data: A DataBundle (its calibration split); needed for `static`.
        spec: The model's input spec; needed for `static`.

    Returns:
        `out`.

    Raises:
        UserError: `static` without data, an empty calibration split, or a graph the
            quantizer refuses (its message, one line).
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if config.mode == "static" and (data is None or spec is None):
        raise UserError("static int8 quantization needs data: give a dataset for calibration")
    with tempfile.TemporaryDirectory(prefix="pruning-lab-quant-") as tmp, _quiet():
        pre = Path(tmp) / "pre.onnx"
        try:
            # Symbolic shape inference (sympy) is for graphs with symbolic shapes such as
            # transformers' sequence length; exported images have fixed shapes but the batch,
            # and it costs ~4 s.
            quant_pre_process(str(float_onnx), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation: quantize the graph as exported
            pre = Path(float_onnx)
        try:
            if config.mode == "dynamic":
                quantize_dynamic(
                    str(pre), str(out), per_channel=config.per_channel, weight_type=QuantType.QInt8
                )
            else:
                import onnx

                name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
                assert data is not None and spec is not None
                quantize_static(
                    str(pre),
                    str(out),
                    _calibration_reader(data, spec, config.calib_batches, name),
                    quant_format=QuantFormat.QDQ,
                    per_channel=config.per_channel,
                    activation_type=(
                        QuantType.QUInt8 if config.activation_type == "uint8" else QuantType.QInt8
                    ),
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                )
        except UserError:
            raise
        except Exception as e:  # the quantizer raises many types on graphs it cannot handle
            raise UserError(
                f"ONNX Runtime could not quantize this model: {first_line(e, 200)}"
            ) from None
    return Path(out)


def _add_metadata(path: Path, props: Mapping[str, str]) -> None:
    """Write `props` into the graph's metadata_props (the quantizer does not keep them)."""
    import onnx

    m = onnx.load(str(path))
    kept = [p for p in m.metadata_props if p.key not in props]
    del m.metadata_props[:]
    m.metadata_props.extend(kept)
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    m.doc_string = props.get("preprocessing", m.doc_string)
    onnx.save(m, str(path))


def _normalisation(spec: InputSpec) -> dict[str, Any]:
    from pruning_core.export import onnx_metadata

    md = onnx_metadata(spec)
    keys = ("preprocessing", "input_layout", "channel_order", "pixel_scale")
    return {**{k: md[k] for k in keys}, "mean": list(spec.mean), "std": list(spec.std)}


def quantize(
    model: nn.Module,
    spec: InputSpec,
    data: Any,
    out: Path,
    config: QuantizeConfig = QuantizeConfig(),
    *,
    source: str = "",
    extra_meta: Mapping[str, Any] | None = None,
    float_eval: EvalResult | None = None,
) -> QuantizeResult:
    """Quantize `model` to int8, measure it through ONNX Runtime, and save a quantized directory.

    Args:
        model: The float model (dense, pruned, shrunk, low-rank; not modified).
        spec: Its input spec.
        data: A DataBundle: calibration split (static) and validation split (accuracy).
        out: The quantized model directory (`model.onnx` + `quantized.json`); an existing
            folder is replaced only when Pruning Lab wrote it (`fsio.check_output_dir`).
        config: Mode and settings.
        source: What the float model was (a registry name or directory), recorded.
        extra_meta: More keys for `quantized.json` (e.g. the source's arch and recipe).
        float_eval: `evaluate(model, data, spec, limit=config.val_limit)` when the caller has
            already measured it (the one view has, in eager PyTorch): used instead of
            evaluating the float model again. One of another image count is not used.

    Returns:
        The `QuantizeResult`: path, accuracies through ONNX Runtime and against float.

    Raises:
        UserError: `out` refused, a model that cannot be exported or quantized, data that does
            not fit the model, an empty calibration split.
    """
    import onnxruntime as ort

    from pruning_core.export import export_onnx, onnx_metadata

    start = time.perf_counter()
    out = Path(out)
    check_output_dir(out)
    data.check_spec(spec)
    # The logits are compared on images the accuracy also counts: never more than val_limit.
    n_compare = min(config.compare_images, config.val_limit or config.compare_images)
    x_val, _ = data.tensors("val", spec, limit=n_compare)
    if not len(x_val):
        raise UserError(f"dataset {data.name} has no validation images to measure int8 accuracy")
    with tempfile.TemporaryDirectory(prefix="pruning-lab-int8-") as tmp:
        f32, q = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        export_onnx(model, spec, f32, example=x_val[:8])
        quantize_onnx(f32, q, config, data=data, spec=spec)
        _add_metadata(q, {**onnx_metadata(spec), "quantization": f"int8 {config.mode}"})
        graph = q.read_bytes()
        float_size = f32.stat().st_size
    meta: dict[str, Any] = {
        **dict(extra_meta or {}),
        "format": QUANT_FORMAT,
        "version": QUANT_VERSION,
        "mode": config.mode,
        "spec": spec.to_dict(),
        "normalisation": _normalisation(spec),
        "source": source,
        "quantizer": f"onnxruntime.quantization {ort.__version__}",
        "onnx_format": "QDQ" if config.mode == "static" else "integer operators (dynamic)",
        "config": config.to_dict(),
        "onnx_sha256": hashlib.sha256(graph).hexdigest(),
    }
    qm = QuantizedModel(graph, spec, meta)
    cpu = torch.device("cpu")
    n_val = data.num_examples("val")
    n_val = min(n_val, config.val_limit) if config.val_limit else n_val
    if float_eval is None or float_eval.n != n_val:
        float_eval = evaluate(model, data, spec, limit=config.val_limit)
    int8_eval = evaluate(qm, data, spec, device=cpu, limit=config.val_limit)
    with torch.inference_mode():
        want = predict_logits(model, x_val).double()
        got = predict_logits(qm, x_val, device=cpu).double()
    agreement = float((want.argmax(1) == got.argmax(1)).double().mean())
    diff = float((want - got).abs().max())
    scale = max(1.0, float(want.abs().max()))
    ok = (
        accuracy_within_int8_tolerance(int8_eval.accuracy, float_eval.accuracy)
        and agreement >= INT8_MIN_AGREEMENT
        and diff <= INT8_LOGIT_RTOL * scale
    )
    measured = {
        "split": "val",
        "images": int8_eval.n,
        "int8_accuracy": int8_eval.accuracy,
        "float_accuracy": float_eval.accuracy,
        "top1_agreement": agreement,
        "max_abs_logit_diff": diff,
        "logit_scale": scale,
        "compared_images": len(x_val),
        "within_tolerance": ok,
        "tolerance": {
            "accuracy": INT8_ACCURACY_TOLERANCE,
            "min_agreement": INT8_MIN_AGREEMENT,
            "logit_rtol": INT8_LOGIT_RTOL,
        },
        "int8_per_class": int8_eval.per_class,
        "float_per_class": float_eval.per_class,
    }
    qm.meta["measured"] = measured
    save_quantized(out, graph, qm.meta)
    return QuantizeResult(
        out=out, path=out / QUANT_ONNX_FILE, mode=config.mode, accuracy=int8_eval.accuracy,
        float_accuracy=float_eval.accuracy, top1_agreement=agreement, max_abs_diff=diff,
        logit_scale=scale, within_tolerance=ok, n_val=int8_eval.n, n_compared=len(x_val),
        size_bytes=len(graph), float_size_bytes=float_size,
        seconds=time.perf_counter() - start, model=qm, int8_eval=int8_eval,
        float_eval=float_eval,
    )  # fmt: skip


# ----------------------------------------------------------------------------- the directory


def save_quantized(out: Path, graph: bytes, meta: Mapping[str, Any]) -> Path:
    """Write a quantized model directory: `model.onnx` and `quantized.json` (atomically; an
    existing folder only when Pruning Lab wrote it).

    Args:
        out: The directory.
        graph: The int8 ONNX bytes.
        meta: The `quantized.json` contents (`format`, `spec`, `mode`...); `onnx_sha256` is
            set from `graph`.

    Returns:
        `out`.

    Raises:
        UserError: As `fsio.check_output_dir`.
    """
    doc = {**dict(meta), "onnx_sha256": hashlib.sha256(graph).hexdigest()}
    with output_dir(Path(out)) as tmp:
        (tmp / QUANT_ONNX_FILE).write_bytes(graph)
        write_json(tmp / QUANT_META_FILE, doc)
    return Path(out)


def is_int8_model(ref: Path | str) -> bool:
    """True for an int8 model: a folder `quantize` wrote, or a zip of one (the Export page's
    int8 download), told from its `quantized.json` without extracting anything."""
    if is_quantized_dir(ref):
        return True
    if not is_model_zip(ref):
        return False
    meta = read_zipped_meta(ref)
    return isinstance(meta, dict) and meta.get("format") == QUANT_FORMAT


def load_quantized(
    directory: Path | str, *, threads: int = 1, device: str | torch.device = "cpu"
) -> QuantizedModel:
    """Reopen a quantized model directory, or a zip of one.

    Args:
        directory: Written by `quantize` / `save_quantized`, or a zip of it (extracted safely
            into a temporary folder, `checkpoint.unzipped_model`; the graph is read into
            memory, so the folder goes once loaded).
        threads: ONNX Runtime intra-op threads.
        device: `cpu` or `cuda` (CUDA execution provider).

    Returns:
        The `QuantizedModel`; its outputs equal those of the model that was saved.

    Raises:
        UserError: Not such a directory, a `quantized.json` that is not ours or is malformed,
            a `model.onnx` changed since it was written (SHA-256), a graph whose input does
            not fit the spec, or one ONNX Runtime cannot load.
    """
    d = Path(directory)
    if is_model_zip(d):
        with unzipped_model(d) as folder:
            return load_quantized(folder, threads=threads, device=device)
    if not d.is_dir():
        raise UserError(f"{shown(str(d))}: no such directory")
    if not is_quantized_dir(d):
        raise UserError(
            f"{shown(str(d))} is not a quantized model directory (needs {QUANT_ONNX_FILE} and "
            f"{QUANT_META_FILE}; write one with pruning-lab quantize)"
        )
    where = f"{shown(str(d / QUANT_META_FILE))}"
    mp = d / QUANT_META_FILE
    if mp.stat().st_size > _MAX_META_BYTES:
        raise UserError(f"{where} is over {_MAX_META_BYTES >> 20} MiB")
    try:
        meta = json.loads(mp.read_text())
    except (ValueError, RecursionError) as e:
        raise UserError(f"{where} is not readable JSON: {shown(str(e))}") from None
    if not isinstance(meta, dict) or meta.get("format") != QUANT_FORMAT:
        raise UserError(f"{where}: format is not '{QUANT_FORMAT}'")
    if meta.get("version") != QUANT_VERSION:
        raise UserError(f"{where}: version {shown(meta.get('version'))} is not {QUANT_VERSION}")
    if meta.get("mode") not in QUANT_MODES:
        raise UserError(f"{where}: mode must be dynamic or static")
    spec = InputSpec.parse(meta.get("spec"), f"{where}: spec")
    gp = d / QUANT_ONNX_FILE
    if gp.stat().st_size > _MAX_ONNX_BYTES:
        raise UserError(f"{shown(str(gp))} is over {_MAX_ONNX_BYTES >> 30} GiB")
    graph = gp.read_bytes()
    if hashlib.sha256(graph).hexdigest() != meta.get("onnx_sha256"):
        raise UserError(
            f"{shown(str(gp))} does not match {QUANT_META_FILE} (changed after it was written)"
        )
    model = QuantizedModel(graph, spec, meta, threads=threads, device=device)
    shape = model.session.get_inputs()[0].shape
    want = [spec.channels, spec.size, spec.size]
    if len(shape) != 4 or [s for s in shape[1:] if isinstance(s, int)] != want:
        raise UserError(
            f"{shown(str(gp))} takes input {shape}, not (N, {', '.join(map(str, want))})"
        )
    return model
