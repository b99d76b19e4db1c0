"""Plain-language explanations of int8 quantization and of deployment runtimes (text only).

Two sentences each, in the voice of `ui/texts.py`, for the pages that show int8 models and the
eager PyTorch vs ONNX Runtime latency (`pruning_core.quantize`, the `onnxruntime` latency
backend, `latency.batch_sweep`).
"""

from __future__ import annotations

__all__ = ["QUANT_EXPLAINED", "RUNTIMES_EXPLAINED"]

QUANT_EXPLAINED = (
    "**Quantization** stores each weight (and, in static mode, each activation) as an 8-bit "
    "integer with a per-channel scale instead of a 32-bit float, so the model is about 4x "
    "smaller and int8 kernels can run it faster; *static* mode fixes the activation ranges once "
    "on calibration images, *dynamic* mode measures them on every call. The accuracy shown is "
    "measured by running the int8 model in ONNX Runtime on the validation images, never "
    "assumed from the float model."
)

RUNTIMES_EXPLAINED = (
    "**Why deployment runtimes differ.** Eager PyTorch runs one Python-dispatched kernel per "
    "layer, while ONNX Runtime first optimises the whole exported graph (BatchNorm folded into "
    "convolutions, operators fused, int8 kernels), so the same model, pruned or not, can be "
    "several times faster there, most of all at batch 1 where per-layer overhead dominates. "
    "A speedup measured in one runtime at one batch size does not carry over to another, "
    "which is why the latency here is shown per runtime and per batch size."
)
