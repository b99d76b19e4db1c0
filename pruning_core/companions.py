"""One view of pruning and its companions on the current model: accuracy, size and measured
latency of dense, unstructured, channel (or head), low-rank, prune + int8, int8 and dynamic
gating, each in eager PyTorch and in ONNX Runtime (issue 12, point 5).

`compare_companions` builds every variant from a private copy of the dense model, measures it
and returns one row per (variant, runtime):

- **dense**: the model as loaded.
- **unstructured**: magnitude pruning of single weights (global, `ratio`): zeros in dense
  tensors (masked). Its `size_bytes` is the size *if stored sparse* (bitmask format: the
  non-zero fp32 values plus one bit per weight, `stats.model_stats`' `size_bitmask`; the
  safetensors file `prune --out` writes stores the zeros and is as large as dense), `params`
  counts the non-zero parameters and `macs` the effective MACs a sparse kernel would do. Its
  ONNX Runtime row is the exported graph, which stores (and computes) the zeros: its size is
  the `.onnx` file's.
- **channel**: magnitude channel pruning at `ratio`, physically shrunk, BatchNorm re-estimated
  (`prune_`); head pruning for a model with attention (a ViT), where channel pruning would
  leave its attention whole.
- **lowrank**: truncated-SVD factorisation (`plans.lowrank`, granularity `lowrank` at
  `rank_ratio`, physical `layers.LowRankLinear` / `LowRankConv2d`); a layer above its
  break-even rank stays dense.
- **prune_int8**: the channel (or head) model quantized to int8 (`quantize.quantize`, static
  QDQ by default, calibrated on the calibration split).
- **int8**: the dense model quantized alike.
- **dynamic**: per-image channel gating (`pruning_core.dynamic`, magnitude gate) at the same
  average effective MACs as the channel-pruned model (`dynamic.equal_macs_config`), BatchNorm
  statistics re-estimated under the gates. CNNs only (it gates convolutions and needs the
  channel model's MACs as its target). Its eager latency is measured honestly: on dense
  kernels the gated model does all the dense work plus its gates, so it is not faster; its
  MACs are those a kernel that skips gated channels would do. It has no ONNX Runtime row
  (the gates are forward hooks of this app).
- **dynamic_learned**: the same gating with FBS's learned gate (`dynamic.LearnedGate`, Gao et
  al. 2019) at the same average effective MACs as the channel model (its predictors' cost
  counted), BatchNorm re-estimated under the untrained gates (which select what the magnitude
  gate selects), then gates and network trained for the fine-tune's `epochs` with the
  fine-tune loop (`dynamic.train_gates`, FBS trains both). It is built only when `epochs` is
  at least 1: an untrained learned gate is the magnitude gate, so with no fine-tune the row
  says so instead of measuring it again. Gates trained on the Inspect page are not reused:
  they are trained at that panel's uniform keep share with the network frozen, not at the
  channel model's MACs. Measured like `dynamic` (no ONNX Runtime row, not faster eagerly);
  its size is the saved network plus the predictors' weights.

What is measured, per row:

- `accuracy`: top-1 on the validation split (the first `limit` images when given), through
  that runtime: eager PyTorch, or an `onnxruntime.InferenceSession` of the exported graph (the
  int8 graph for int8 rows).
- `size_bytes`: the saved file: the safetensors state (`budget.saved_bytes`) for eager models,
  the `.onnx` graph for ONNX Runtime and int8 rows; unstructured eager: sparse size (above).
- `params`, `macs` (per image; `params_kind` / `macs_kind` say which count).
- `median_ms`, `p10_ms`, `p90_ms`: one batch of `batch_size` random images on the CPU with
  `timing.PROTOCOL` (its threads, warm-up, repeats, time budget, interleaved rounds), as
  `latency.benchmark_backends` times backends: once every variant is built, all of them in
  both runtimes are timed in the same interleaved rounds with the dense model run eagerly
  (`latency.time_interleaved`), and `vs_dense` compares each with that one reference
  (`timing.compare`: "no measurable difference" where the p10-p90 ranges overlap). Dense is
  timed once per run, not once per variant.
- `pareto_size` / `pareto_latency`: on the Pareto front of accuracy against size, and against
  median latency (`tradeoffs.pareto_front`, over the measured rows).

A variant or runtime that does not apply to the model gets a row with `status`
`not applicable` and the reason in plain words, never an exception; one that broke gets
`failed` with the error's first line.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from pruning_core.budget import saved_bytes
from pruning_core.data import DataBundle
from pruning_core.errors import UserError, first_line
from pruning_core.evaluate import evaluate
from pruning_core.latency import PROTOCOL, LatencyProtocol, time_interleaved
from pruning_core.layers import example_input, trainable_copy
from pruning_core.models import LoadedModel
from pruning_core.ort import OrtModule, to_ort
from pruning_core.progress import ProgressFn, Report
from pruning_core.spec import InputSpec
from pruning_core.stats import count_macs, count_params, model_stats
from pruning_core.timing import compare
from pruning_core.tradeoffs import pareto_front

__all__ = [
    "COMPANION_COLUMNS",
    "COMPANION_VARIANTS",
    "NOT_APPLICABLE",
    "RUNTIMES",
    "VARIANT_LABELS",
    "CompanionConfig",
    "companion_summary",
    "compare_companions",
    "variant_label",
]

COMPANION_VARIANTS = ("dense", "unstructured", "channel", "lowrank", "prune_int8", "int8",
                      "dynamic", "dynamic_learned")  # fmt: skip
"""Every variant `compare_companions` knows, in the order of its rows."""
VARIANT_LABELS = {
    "dense": "dense",
    "unstructured": "unstructured (masked)",
    "channel": "channel (shrunk)",
    "lowrank": "low rank",
    "prune_int8": "pruned + int8",
    "int8": "int8",
    "dynamic": "dynamic gating (magnitude)",
    "dynamic_learned": "dynamic gating (learned)",
}


def variant_label(variant: str, *, attention: bool = False, int8_mode: str | None = None) -> str:
    """The words for one variant, the same in the picker, the figure, the table and the report.

    Args:
        variant: One of `COMPANION_VARIANTS`.
        attention: The model has attention: its structured variant removes heads, so it reads
            "head (shrunk)", not "channel (shrunk)".
        int8_mode: `static` or `dynamic`: named after an int8 variant's label, so a result says
            which int8 was measured (None: not named, as in a picker before a run).

    Returns:
        The label, e.g. "pruned + int8 (static)".

    Raises:
        KeyError: An unknown variant.
    """
    label = VARIANT_LABELS[variant]
    if variant == "channel" and attention:
        label = "head (shrunk)"
    if int8_mode and variant in ("int8", "prune_int8"):
        label = f"{label} ({int8_mode})"
    return label


# The gated variants: the whole network kept, channels chosen per image, no ONNX Runtime row.
_DYNAMIC_VARIANTS = ("dynamic", "dynamic_learned")
RUNTIMES = ("eager", "onnxruntime")
"""eager: PyTorch as trained; onnxruntime: the exported graph in an InferenceSession."""
NOT_APPLICABLE = "not applicable"
_RUNTIME_WORDS = {"eager": "eager PyTorch", "onnxruntime": "ONNX Runtime"}
COMPANION_COLUMNS = (
    "variant", "label", "runtime", "status", "reason", "accuracy", "n_val", "size_bytes",
    "size_kind", "params", "params_kind", "macs", "macs_kind", "median_ms", "p10_ms", "p90_ms",
    "vs_dense", "batch_size", "threads", "device", "how", "pareto_size", "pareto_latency",
)  # fmt: skip
INT8_MODES = ("static", "dynamic")
_NO_ORT_DYNAMIC = (
    "per-image gates are forward hooks of this app, not part of an exportable graph; a "
    "deployment needs a kernel that skips gated channels"
)
_INT8_NO_EAGER = (
    "an int8 ONNX model runs only in ONNX Runtime: there is no PyTorch form of it to run eagerly"
)
_LEARNED_NEEDS_EPOCHS = (
    "the learned gate is trained with the fine-tune loop: set fine-tune epochs to 1 or more to "
    "measure it (untrained, it selects exactly the channels the magnitude gate selects)"
)
_DYNAMIC_SLOWER = (
    "on dense kernels a gated model is not faster: PyTorch computes every channel and then the "
    "gates; the MACs are those a kernel that skips gated channels would do"
)


@dataclass(frozen=True)
class CompanionConfig:
    """What `compare_companions` builds and how it measures.

    Attributes:
        ratio: Share removed by unstructured (of weights) and channel / head pruning (of
            channels or heads), in (0, 1).
        rank_ratio: Share of each layer's rank removed by low rank (granularity `lowrank`,
            global scope), in (0, 1).
        int8_mode: `static` (calibrated QDQ, ONNX Runtime's fast int8 path) or `dynamic`.
        batch_size: Images per timed call.
        variants: Which of `COMPANION_VARIANTS` (dense is always measured: the reference).
        epochs: Fine-tune epochs after unstructured, channel and low-rank pruning (0: none;
            the train split, distillation from dense; int8 of the pruned model uses the
            fine-tuned one; magnitude gating is data-free and never fine-tuned). The learned
            gate (`dynamic_learned`) trains, gates and network, for as many epochs, and is
            measured only when there is at least one.
        limit: Validation images for every accuracy (None: the whole split).
        threads: CPU threads while timing (torch, and ONNX Runtime's intra-op threads).
        repeats: Timed calls per backend (None: the protocol's).
        device: Where fine-tuning runs (`cpu`, `cuda`, `auto`); everything else runs on the
            CPU, so the runtimes compare on one device.
        seed: Seed of the random timing input and the fine-tune.

    Raises:
        UserError: A ratio outside (0, 1), an unknown variant or int8 mode, a count out of
            range.
    """

    ratio: float = 0.5
    rank_ratio: float = 0.5
    int8_mode: str = "static"
    batch_size: int = PROTOCOL.batch_size
    variants: tuple[str, ...] = COMPANION_VARIANTS
    epochs: int = 0
    limit: int | None = None
    threads: int = PROTOCOL.threads
    repeats: int | None = None
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("ratio", "rank_ratio"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not 0.0 < float(v) < 1.0:
                raise UserError(f"{name} must be in (0, 1), got {v!r}")
        if self.int8_mode not in INT8_MODES:
            raise UserError(
                f"unknown int8 mode '{self.int8_mode}' (choose from {', '.join(INT8_MODES)})"
            )
        variants = (self.variants,) if isinstance(self.variants, str) else tuple(self.variants)
        unknown = [v for v in variants if v not in COMPANION_VARIANTS]
        if unknown:
            raise UserError(
                f"unknown variant '{unknown[0]}' (choose from {', '.join(COMPANION_VARIANTS)})"
            )
        object.__setattr__(self, "variants", tuple(dict.fromkeys(variants)))
        if self.batch_size < 1 or self.threads < 1:
            raise UserError("batch size and threads must be >= 1")
        if not 0 <= self.epochs <= 50:
            raise UserError(f"fine-tune epochs must be 0-50, got {self.epochs}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"limit must be >= 1 validation image, got {self.limit}")
        if self.repeats is not None and self.repeats < 1:
            raise UserError(f"repeats must be >= 1, got {self.repeats}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {**dataclasses.asdict(self), "variants": list(self.variants)}


@dataclass
class _Built:
    """One variant ready to measure: the model to run (or why there is none) and its counts."""

    variant: str
    model: nn.Module | None = None
    reason: str = ""
    status: str = "ok"
    how: str = ""
    size_bytes: float = math.nan
    size_kind: str = "saved weights file (safetensors)"
    params: float = math.nan
    params_kind: str = "all"
    macs: float = math.nan
    macs_kind: str = "dense kernels"
    eager_accuracy: float | None = None
    ort_accuracy: float | None = None
    eager_reason: str = ""
    ort_reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def compare_companions(
    loaded: LoadedModel,
    data: DataBundle,
    config: CompanionConfig = CompanionConfig(),
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> pd.DataFrame:
    """Dense, unstructured, channel, low-rank, prune + int8, int8 and dynamic gating of the
    current model, each measured in eager PyTorch and ONNX Runtime (see the module docstring).

    Args:
        loaded: The dense model (never modified: every variant prunes its own copy).
        data: The dataset (validation split for accuracy, calibration split for BatchNorm
            re-estimation and int8 calibration, train split for a fine-tune).
        config: What to build and how to measure.
        progress: Called with a `progress.Report` (`fraction` of the steps done: each
            variant's building and accuracy, then the timing of them all; `message`) after
            each step.
        cancel: When set, the variants not yet built get rows saying so (status
            `cancelled`), nothing is timed (the measured rows keep their accuracy and size,
            latency missing, and say why) and `attrs["cancelled"]` is True.

    Returns:
        One row per (variant, runtime) in `COMPANION_COLUMNS` order, variants in
        `COMPANION_VARIANTS` order (dense first). `attrs`: protocol (the timing settings in
        words), threads, batch_size, device (`cpu`), n_val, dense_accuracy, granularity
        (`channel` or `head`), config (JSON text), cancelled, seconds.

    Raises:
        UserError: The data does not fit the model, or the dense model cannot be evaluated.
    """
    start = time.perf_counter()
    data.check_spec(loaded.spec)
    spec = loaded.spec
    cpu = torch.device("cpu")
    dense = trainable_copy(loaded.model, cpu).eval()
    limit = config.limit
    n_val = min(data.num_examples("val"), limit) if limit else data.num_examples("val")
    protocol = PROTOCOL.with_(threads=config.threads, batch_size=config.batch_size,
                              repeats=config.repeats)  # fmt: skip
    x = example_input(dense, spec, config.batch_size, random=True, seed=config.seed)
    from pruning_core.attention import has_attention

    granularity = "head" if has_attention(dense) else "channel"
    wanted = ["dense", *[v for v in config.variants if v != "dense"]]
    wanted = [v for v in COMPANION_VARIANTS if v in wanted]
    steps = len(wanted) + 1  # and the timing of them all
    done = 0

    def report(message: str) -> None:
        if progress is not None:
            progress(Report(min(done / steps, 1.0), message))

    built: dict[str, _Built] = {}
    cancelled = False
    dense_acc = float("nan")
    with tempfile.TemporaryDirectory(prefix="pruning-lab-companions-") as tmp:
        for v in wanted:
            if cancel is not None and cancel.is_set():
                cancelled = True
                built[v] = _Built(v, status="cancelled", reason="cancelled before it was measured")
                continue
            label = variant_label(v, attention=granularity == "head")
            report(f"{label}: building and measuring accuracy")
            if v == "dense":
                b = _dense(dense, spec)
            else:
                try:
                    b = _BUILDERS[v](dense, loaded, data, spec, config, granularity, built,
                                     Path(tmp))  # fmt: skip
                except UserError as e:
                    b = _Built(v, status=NOT_APPLICABLE, reason=str(e))
                except (RuntimeError, ValueError) as e:  # a model these tools cannot handle
                    b = _Built(v, status="failed", reason=f"could not be built: {first_line(e)}")
            built[v] = b
            _accuracy(b, data, spec, x, protocol, config)
            if v == "dense":
                dense_acc = b.eager_accuracy if b.eager_accuracy is not None else math.nan
            done += 1
            report(f"{label}: accuracy measured")
        timings: dict[tuple[str, str], dict[str, Any]] = {}
        if cancel is not None and cancel.is_set():
            cancelled = True
        else:
            report("timing every variant in the same interleaved rounds as dense")
            timings = _time_all(built, dense, x, protocol)
        done += 1
        report("timed")
    rows: list[dict[str, Any]] = []
    for v in wanted:
        b = built[v]
        rows += _rows_of(b, timings.get((v, "eager")), timings.get((v, "onnxruntime")),
                         int8_mode=config.int8_mode, timed=bool(timings))  # fmt: skip
    df = pd.DataFrame(rows, columns=list(COMPANION_COLUMNS))
    df["batch_size"] = config.batch_size
    df["threads"] = protocol.threads
    df["device"] = "cpu"
    df["n_val"] = n_val
    _mark_pareto(df)
    df.attrs.update(
        protocol=protocol.describe(batch_size=config.batch_size, device="cpu"),
        threads=protocol.threads, batch_size=config.batch_size, device="cpu", n_val=n_val,
        dense_accuracy=dense_acc, granularity=granularity, cancelled=cancelled,
        seconds=time.perf_counter() - start, ratio=config.ratio, rank_ratio=config.rank_ratio,
        int8_mode=config.int8_mode, epochs=config.epochs,
    )  # fmt: skip
    return df


# ----------------------------------------------------------------------------- building


def _dense(dense: nn.Module, spec: InputSpec) -> _Built:
    return _Built(
        "dense", model=dense, how="the model as loaded", size_bytes=saved_bytes(dense),
        params=count_params(dense), macs=count_macs(dense, spec),
    )  # fmt: skip


def _finetune(
    model: nn.Module,
    prune_cfg: Any,
    dense: nn.Module,
    data: DataBundle,
    spec: InputSpec,
    config: CompanionConfig,
    structured: bool,
) -> str:
    """Prune `model` in place as `prune_cfg` says, fine-tuned for `config.epochs` epochs (masks
    held, distillation from dense) when above 0; returns how, in words."""
    from pruning_core.prune import prune_
    from pruning_core.schedules import run_schedule
    from pruning_core.train import DEFAULT_FINETUNE, STRUCTURED_FINETUNE

    if config.epochs == 0:
        prune_(model, prune_cfg, data=data, spec=spec)
        return "no fine-tune"
    base = STRUCTURED_FINETUNE if structured else DEFAULT_FINETUNE
    tc = dataclasses.replace(base, epochs=config.epochs, device=config.device,
                             seed=config.seed, val_limit=config.limit)  # fmt: skip
    teacher = copy.deepcopy(dense).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    run_schedule(model, prune_cfg, "oneshot", train_config=tc, data=data, spec=spec,
                 teacher=teacher)  # fmt: skip
    model.cpu().eval()
    word = "epoch" if config.epochs == 1 else "epochs"
    return f"then {config.epochs} fine-tune {word} ({base.optimizer}, distilled from dense)"


def _unstructured(
    dense: nn.Module, loaded: LoadedModel, data: DataBundle, spec: InputSpec,
    config: CompanionConfig, granularity: str, built: dict[str, _Built], tmp: Path,
) -> _Built:  # fmt: skip
    from pruning_core.prune import PruneConfig

    m = copy.deepcopy(dense)
    how = _finetune(m, PruneConfig(method="magnitude", ratio=config.ratio), dense, data, spec,
                    config, structured=False)  # fmt: skip
    st = model_stats(m, spec)
    return _Built(
        "unstructured", model=m.eval(),
        how=f"magnitude, single weights, global, {config.ratio:.0%} removed (zeros in dense "
        f"tensors), {how}",
        size_bytes=st["size_bitmask"],
        size_kind="if stored sparse: non-zero fp32 values + 1 bit per weight (the saved file "
        "keeps the zeros and is as large as dense)",
        params=st["params_nonzero"], params_kind="non-zero", macs=st["macs_effective"],
        macs_kind="effective: what a sparse kernel would do (dense kernels do all of dense)",
        extra={"ort_size_kind": "the .onnx file (it stores the zeros)"},
    )  # fmt: skip


def _structured(
    dense: nn.Module, loaded: LoadedModel, data: DataBundle, spec: InputSpec,
    config: CompanionConfig, granularity: str, built: dict[str, _Built], tmp: Path,
) -> _Built:  # fmt: skip
    from pruning_core.prune import PruneConfig

    m = copy.deepcopy(dense)
    what = "heads" if granularity == "head" else "channels"
    try:
        how = _finetune(m, PruneConfig(method="magnitude", granularity=granularity,
                                       ratio=config.ratio), dense, data, spec, config,
                        structured=True)  # fmt: skip
    except UserError as e:
        raise UserError(f"{granularity} pruning does not apply to this model: {e}") from None
    if count_params(m) >= count_params(dense):
        raise UserError(f"{granularity} pruning removed nothing from this model at "
                        f"{config.ratio:.0%}")  # fmt: skip
    recal = ", BatchNorm re-estimated" if _has_batchnorm(m) else ""
    return _Built(
        "channel", model=m.eval(),
        how=f"magnitude {granularity} pruning, {config.ratio:.0%} of {what} removed, physically "
        f"shrunk{recal}, {how}",
        size_bytes=saved_bytes(m), params=count_params(m), macs=count_macs(m, spec),
        extra={"granularity": granularity},
    )  # fmt: skip


def _lowrank(
    dense: nn.Module, loaded: LoadedModel, data: DataBundle, spec: InputSpec,
    config: CompanionConfig, granularity: str, built: dict[str, _Built], tmp: Path,
) -> _Built:  # fmt: skip
    from pruning_core.layers import LOW_RANK_LAYERS
    from pruning_core.prune import PruneConfig

    m = copy.deepcopy(dense)
    try:
        how = _finetune(m, PruneConfig(method="magnitude", granularity="lowrank",
                                       ratio=config.rank_ratio), dense, data, spec, config,
                        structured=False)  # fmt: skip
    except UserError as e:
        raise UserError(f"low-rank factorisation does not apply to this model: {e}") from None
    pairs = sum(isinstance(mod, LOW_RANK_LAYERS) for mod in m.modules())
    if pairs == 0:
        raise UserError(
            f"no layer gets smaller at {config.rank_ratio:.0%} of its rank removed (each stays "
            "dense above its break-even rank, r x (in + out) >= in x out): try a larger rank ratio"
        )
    return _Built(
        "lowrank", model=m.eval(),
        how=f"truncated SVD, {config.rank_ratio:.0%} of the rank removed (global), {pairs} "
        f"layers factorised into thin pairs, {how}",
        size_bytes=saved_bytes(m), params=count_params(m), macs=count_macs(m, spec),
    )  # fmt: skip


def _int8_of(
    variant: str, source: _Built, what: str, spec: InputSpec, data: DataBundle,
    config: CompanionConfig, tmp: Path,
) -> _Built:  # fmt: skip
    from pruning_core.quantize import QuantizeConfig, quantize

    assert source.model is not None
    # Calibrated (static) on `QuantizeConfig`'s default: the 4 batches of 128 that are the
    # whole calibration split (512 images), as `pruning-lab quantize` and the Export page do.
    qc = QuantizeConfig(mode=config.int8_mode, val_limit=config.limit,
                        compare_images=min(512, config.limit or 512))  # fmt: skip
    # The float model's accuracy on these images was measured in eager PyTorch when the
    # source was (dense, or the channel variant): quantize does not evaluate it again.
    r = quantize(source.model, spec, data, tmp / variant, qc, source=what,
                 float_eval=source.extra.get("eager_eval"))  # fmt: skip
    params, macs = source.params, source.macs
    return _Built(
        variant, model=r.model,
        how=f"{what} quantized to int8 ({config.int8_mode}"
        + (", calibrated on the calibration split" if config.int8_mode == "static" else "")
        + f"); float {r.float_accuracy:.4f} vs int8 {r.accuracy:.4f} on the same images, top-1 "
        f"agreement {r.top1_agreement:.3f}",
        size_bytes=r.size_bytes, size_kind="the int8 .onnx file", params=params,
        params_kind="all (int8)", macs=macs, macs_kind="int8 MACs", ort_accuracy=r.accuracy,
        eager_reason=_INT8_NO_EAGER,
        extra={"float_accuracy": r.float_accuracy, "within_tolerance": r.within_tolerance},
    )  # fmt: skip


def _prune_int8(
    dense: nn.Module, loaded: LoadedModel, data: DataBundle, spec: InputSpec,
    config: CompanionConfig, granularity: str, built: dict[str, _Built], tmp: Path,
) -> _Built:  # fmt: skip
    src = built.get("channel")
    if src is None or src.model is None:
        src = _structured(dense, loaded, data, spec, config, granularity, built, tmp)
    what = f"the {granularity}-pruned model ({config.ratio:.0%})"
    assert src.model is not None  # _structured raises rather than return no model
    return _int8_of("prune_int8", src, what, spec, data, config, tmp)


def _int8(
    dense: nn.Module, loaded: LoadedModel, data: DataBundle, spec: InputSpec,
    config: CompanionConfig, granularity: str, built: dict[str, _Built], tmp: Path,
) -> _Built:  # fmt: skip
    return _int8_of("int8", built["dense"], "the dense model", spec, data, config, tmp)


def _gating_applies(dense: nn.Module, granularity: str) -> None:
    """Refuse, in words, a model that per-image channel gating does not apply to."""
    if granularity == "head":
        raise UserError(
            "dynamic gating is for CNNs: it gates the channels of convolutions, and this model's "
            "work is in attention and Linear layers"
        )
    if not any(isinstance(m, nn.Conv2d) for m in dense.modules()):
        raise UserError("dynamic gating gates convolutions, and this model has none")


def _gating_target(
    dense: nn.Module, loaded: LoadedModel, data: DataBundle, spec: InputSpec,
    config: CompanionConfig, granularity: str, built: dict[str, _Built], tmp: Path,
) -> float:  # fmt: skip
    """The channel model's MACs per image, the target of both gates; refuses a model that
    gating does not apply to.

    Raises:
        UserError: A model with attention (head pruning) or without convolutions.
    """
    _gating_applies(dense, granularity)
    ch = built.get("channel")
    if ch is not None and ch.model is not None and math.isfinite(ch.macs):
        return float(ch.macs)
    kept = built["dense"].extra
    if "gating_target_macs" not in kept:
        # The channel variant was not asked for (its rows are not shown): prune a copy for its
        # MACs alone, without the fine-tune, which changes no shape; once for both gates.
        quick = dataclasses.replace(config, epochs=0)
        ch = _structured(dense, loaded, data, spec, quick, granularity, built, tmp)
        kept["gating_target_macs"] = float(ch.macs)
    return float(kept["gating_target_macs"])


def _dynamic(
    dense: nn.Module, loaded: LoadedModel, data: DataBundle, spec: InputSpec,
    config: CompanionConfig, granularity: str, built: dict[str, _Built], tmp: Path,
) -> _Built:  # fmt: skip
    from pruning_core.dynamic import DynamicConfig, DynamicModel, equal_macs_config, measure_dynamic

    target = _gating_target(dense, loaded, data, spec, config, granularity, built, tmp)
    cfg, _ = equal_macs_config(dense, spec, target, DynamicConfig(gate="magnitude"))
    dyn = DynamicModel(dense, cfg, spec)
    recal = dyn.recalibrate(data)
    rep = measure_dynamic(dense, data, spec, dyn, limit=config.limit)
    return _Built(
        "dynamic", model=dyn.eval(),
        how=f"magnitude gate on every convolution but the classifier, keep {cfg.keep:.2f} "
        f"searched so the average effective MACs equal the channel model's "
        f"({rep.mean_macs / max(rep.dense_macs, 1):.1%} of dense)"
        + (", BatchNorm re-estimated under the gates" if recal else "")
        + "; data-free, not fine-tuned. " + _DYNAMIC_SLOWER[0].upper() + _DYNAMIC_SLOWER[1:],
        size_bytes=saved_bytes(dense),
        size_kind="saved file: the whole network is kept (gates have no weights)",
        params=count_params(dense), macs=rep.mean_macs,
        macs_kind="effective per image, averaged: what a kernel that skips gated channels "
        "would do, gates included",
        eager_accuracy=rep.accuracy, ort_reason=_NO_ORT_DYNAMIC,
    )  # fmt: skip


def _dynamic_learned(
    dense: nn.Module, loaded: LoadedModel, data: DataBundle, spec: InputSpec,
    config: CompanionConfig, granularity: str, built: dict[str, _Built], tmp: Path,
) -> _Built:  # fmt: skip
    """FBS's learned gate at the channel model's MACs, trained for the fine-tune's epochs."""
    from pruning_core.dynamic import (
        GATE_LR,
        DynamicConfig,
        DynamicModel,
        equal_macs_config,
        measure_dynamic,
        train_gates,
    )

    _gating_applies(dense, granularity)  # a model gating does not apply to says that first
    if config.epochs == 0:
        raise UserError(_LEARNED_NEEDS_EPOCHS)
    target = _gating_target(dense, loaded, data, spec, config, granularity, built, tmp)
    # Searched again rather than taken from the magnitude gate: the predictor costs Cin x Cout
    # MACs per layer where the magnitude gate costs Cout x Cin / groups.
    cfg, _ = equal_macs_config(dense, spec, target, DynamicConfig(gate="learned"))
    dyn = DynamicModel(dense, cfg, spec)
    # Untrained, the gates select what the magnitude gate selects: the statistics are
    # re-estimated under that selection before training starts from it (as
    # benchmarks/dynamic_section.py does); training the network then keeps them current.
    recal = dyn.recalibrate(data)
    tr = train_gates(dyn, data, epochs=config.epochs, train_network=True, seed=config.seed,
                     device=config.device, val_limit=config.limit)  # fmt: skip
    dyn.cpu().eval()
    rep = measure_dynamic(dense, data, spec, dyn, limit=config.limit)
    word = "epoch" if config.epochs == 1 else "epochs"
    return _Built(
        "dynamic_learned", model=dyn,
        how=f"learned gate (FBS, Gao et al. 2019: a predictor per convolution from its pooled "
        f"input) on every convolution but the classifier, keep {cfg.keep:.2f} searched so the "
        f"average effective MACs equal the channel model's "
        f"({rep.mean_macs / max(rep.dense_macs, 1):.1%} of dense, predictors included)"
        + (", BatchNorm re-estimated under the untrained gates" if recal else "")
        + f", then gates and network trained {config.epochs} {word} ({tr.steps:,} steps"
        + (", cancelled" if tr.cancelled else "")
        + f"; Adam {GATE_LR:g}, cosine, task loss + FBS's L1 on the saliencies, not distilled). "
        + _DYNAMIC_SLOWER[0].upper() + _DYNAMIC_SLOWER[1:],
        size_bytes=saved_bytes(dyn),
        size_kind="saved file: the whole network plus the gates' predictors",
        params=count_params(dyn), params_kind="all, the predictors' included",
        macs=rep.mean_macs,
        macs_kind="effective per image, averaged: what a kernel that skips gated channels "
        "would do, gates included",
        eager_accuracy=rep.accuracy, ort_reason=_NO_ORT_DYNAMIC,
    )  # fmt: skip


def _has_batchnorm(m: nn.Module) -> bool:
    return any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())


_Builder = Callable[
    [nn.Module, LoadedModel, DataBundle, InputSpec, CompanionConfig, str, dict[str, _Built], Path],
    _Built,
]
_BUILDERS: dict[str, _Builder] = {
    "unstructured": _unstructured,
    "channel": _structured,
    "lowrank": _lowrank,
    "prune_int8": _prune_int8,
    "int8": _int8,
    "dynamic": _dynamic,
    "dynamic_learned": _dynamic_learned,
}


# ----------------------------------------------------------------------------- measuring


def _accuracy(
    b: _Built,
    data: DataBundle,
    spec: InputSpec,
    x: torch.Tensor,
    protocol: LatencyProtocol,
    config: CompanionConfig,
) -> None:
    """Accuracy of one built variant through each runtime, into `b`; its ONNX Runtime model
    (exported here, a session with the protocol's threads) into `b.extra["ort_model"]` for
    the timing."""
    if b.model is None:
        return
    cpu = torch.device("cpu")
    limit = config.limit
    model = b.model
    ort_model = model if isinstance(model, OrtModule) else None
    if ort_model is None:
        if b.eager_accuracy is None:
            ev = evaluate(model, data, spec, device=cpu, limit=limit)
            # Kept for int8 of this model: `quantize` compares int8 with the float model on
            # the same images, and need not evaluate it again.
            b.extra["eager_eval"] = ev
            b.eager_accuracy = ev.accuracy
        if not b.ort_reason:
            try:
                ort_model = to_ort(model, x[:8], spec=spec, threads=protocol.threads)
            except UserError as e:
                b.ort_reason = f"this model cannot be exported to ONNX: {e}"
    if ort_model is not None:
        ort_model = ort_model.with_settings(threads=protocol.threads, device="cpu")
        if b.ort_accuracy is None:
            b.ort_accuracy = evaluate(ort_model, data, spec, device=cpu, limit=limit).accuracy
        b.extra["ort_size_bytes"] = ort_model.size_bytes
        b.extra["ort_model"] = ort_model


def _time_all(
    built: dict[str, _Built], dense: nn.Module, x: torch.Tensor, protocol: LatencyProtocol
) -> dict[tuple[str, str], dict[str, Any]]:
    """Latency of every built variant in each runtime, all timed in the same interleaved rounds
    with dense eager PyTorch (`latency.time_interleaved`): one reference, timed once, against
    which each `vs_dense` is judged (`timing.compare`).

    Returns:
        (variant, runtime) -> median_ms, p10_ms, p90_ms, vs_dense.
    """
    runners: dict[str, tuple[nn.Module, torch.Tensor]] = {"dense/eager": (dense, x)}
    for v, b in built.items():
        if b.model is None or b.status != "ok":
            continue
        if v != "dense" and not isinstance(b.model, OrtModule) and not b.eager_reason:
            # On the CPU as given: unstructured and dynamic gating on dense kernels (as the
            # `masked` backend), channel and low rank physically smaller (`structured`).
            runners[f"{v}/eager"] = (b.model.eval(), x)
        ort_model = b.extra.get("ort_model")
        if ort_model is not None and not b.ort_reason:
            runners[f"{v}/onnxruntime"] = (ort_model, x)
    with torch.inference_mode():
        lats = time_interleaved(runners, protocol=protocol)
    base = lats["dense/eager"]
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for name, lat in lats.items():
        v, runtime = name.split("/")
        out[(v, runtime)] = {
            "median_ms": lat.median_ms, "p10_ms": lat.p10_ms, "p90_ms": lat.p90_ms,
            "vs_dense": "the reference" if name == "dense/eager" else compare(base, lat).text,
        }  # fmt: skip
    return out


def _rows_of(
    b: _Built,
    eager: dict[str, Any] | None,
    ort: dict[str, Any] | None,
    *,
    int8_mode: str,
    timed: bool,
) -> list[dict[str, Any]]:
    """The eager and ONNX Runtime rows of one variant (`timed`: the latency phase ran; it did
    not when the run was cancelled first). An int8 variant's label names its mode, so the
    figure, the table and the report say which int8 was measured from the result itself."""
    out = []
    label = variant_label(
        b.variant, attention=b.extra.get("granularity") == "head", int8_mode=int8_mode
    )
    for runtime in RUNTIMES:
        row: dict[str, Any] = {
            "variant": b.variant, "label": label, "runtime": runtime,
            "status": b.status, "reason": b.reason, "how": b.how,
        }  # fmt: skip
        if b.status == "ok":
            acc = b.eager_accuracy if runtime == "eager" else b.ort_accuracy
            why = b.eager_reason if runtime == "eager" else b.ort_reason
            lat = eager if runtime == "eager" else ort
            if acc is None or why:
                row.update(status=NOT_APPLICABLE, reason=why or "not measured")
            else:
                size, size_kind = b.size_bytes, b.size_kind
                if (
                    runtime == "onnxruntime"
                    and "ort_size_bytes" in b.extra
                    and b.variant not in ("int8", "prune_int8")
                ):
                    size = b.extra["ort_size_bytes"]
                    size_kind = b.extra.get("ort_size_kind", "the .onnx file")
                row.update(
                    accuracy=acc, size_bytes=size, size_kind=size_kind, params=b.params,
                    params_kind=b.params_kind, macs=b.macs, macs_kind=b.macs_kind,
                )  # fmt: skip
                if lat is not None:
                    row.update(lat)
                elif not timed:
                    row["reason"] = "cancelled before the latency of every variant was timed"
                if b.variant in _DYNAMIC_VARIANTS:
                    row["reason"] = _DYNAMIC_SLOWER
        out.append(row)
    return out


def _mark_pareto(df: pd.DataFrame) -> None:
    """`pareto_size` and `pareto_latency` over the measured rows (False elsewhere)."""
    ok = df["status"] == "ok"
    for col, cost in (("pareto_size", "size_bytes"), ("pareto_latency", "median_ms")):
        flags = pd.Series(False, index=df.index)
        sub = df.loc[ok, [cost, "accuracy"]].astype(float)
        if len(sub):
            flags.loc[sub.index] = pareto_front(sub, cost, "accuracy")
        df[col] = flags.astype(bool)


def companion_summary(df: pd.DataFrame) -> str:
    """One plain sentence per front: which measured rows no other beats."""
    words = []
    for col, what in (("pareto_size", "size"), ("pareto_latency", "latency")):
        on = df[df[col].astype(bool)] if col in df else df.iloc[0:0]
        names = [f"{r.label} ({_RUNTIME_WORDS.get(str(r.runtime), r.runtime)})"
                 for r in on.itertuples()]  # fmt: skip
        if names:
            words.append(f"Best accuracy for its {what}: {', '.join(names)}.")
    return " ".join(words)
