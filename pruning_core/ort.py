"""ONNX Runtime as a runtime of its own: sessions with the latency protocol's threads, and a
module that runs an ONNX graph where PyTorch code expects an `nn.Module`.

`OrtModule` wraps one `onnxruntime.InferenceSession` (CPU execution provider; the CUDA one when
the installed onnxruntime reports it and the caller asks for CUDA): calling it with a float
tensor `(N, C, H, W)` returns the logits `(N, classes)` as a CPU tensor, so `evaluate`,
`predict_logits` and `timing.sample_times` run it unchanged. It holds the graph's bytes, so a
copy with other settings (threads, device) is one `with_settings` away. `to_ort` exports a
PyTorch model (dense, shrunk, low-rank: anything `export.export_onnx` accepts, checked against
PyTorch) and wraps it.

onnxruntime is imported inside the functions: importing the package stays cheap.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pruning_core.errors import UserError
from pruning_core.spec import InputSpec

__all__ = [
    "CUDA_PROVIDER",
    "OrtModule",
    "cuda_provider_available",
    "providers_for",
    "session_options",
    "to_ort",
]

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def cuda_provider_available() -> bool:
    """Whether the installed onnxruntime reports its CUDA execution provider."""
    import onnxruntime as ort

    return CUDA_PROVIDER in ort.get_available_providers()


def providers_for(device: str | torch.device) -> list[str]:
    """The execution providers for `device` (`cpu`, `cuda`, `cuda:0`...).

    Raises:
        UserError: CUDA asked for but this onnxruntime has no CUDA execution provider (the
            `onnxruntime-gpu` package provides it), or an unknown device type.
    """
    kind = torch.device(device).type
    if kind == "cpu":
        return [CPU_PROVIDER]
    if kind == "cuda":
        if not cuda_provider_available():
            raise UserError(
                "this onnxruntime has no CUDA execution provider (it comes with the "
                "onnxruntime-gpu package), so ONNX Runtime cannot run on the GPU here"
            )
        return [CUDA_PROVIDER, CPU_PROVIDER]
    raise UserError(f"ONNX Runtime runs on cpu or cuda, not {kind}")


def session_options(threads: int) -> Any:
    """Session options following the latency protocol: `threads` intra-op threads, one
    inter-op thread, sequential execution, every graph optimisation (as deployed).

    Raises:
        UserError: `threads` below 1.
    """
    import onnxruntime as ort

    if threads < 1:
        raise UserError(f"threads must be >= 1, got {threads}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # warnings about unused initialisers are not the user's concern
    return opts


class OrtModule(nn.Module):
    """An ONNX graph run by ONNX Runtime, callable like the PyTorch model it came from.

    Args:
        onnx: The graph: a `.onnx` path or its bytes (kept in memory either way).
        threads: ONNX Runtime intra-op threads (the latency protocol's `threads`).
        device: `cpu` or `cuda` (the CUDA execution provider; inputs and outputs stay in host
            memory, so a call includes the copies, as a deployed ONNX Runtime service does).

    Raises:
        UserError: A graph onnxruntime cannot load, or a device it cannot run on.
    """

    def __init__(
        self, onnx: bytes | str | Path, *, threads: int = 1, device: str | torch.device = "cpu"
    ) -> None:
        super().__init__()
        self.onnx_bytes = onnx if isinstance(onnx, bytes) else Path(onnx).read_bytes()
        self._open(threads, device)

    def with_settings(
        self, *, threads: int | None = None, device: str | torch.device | None = None
    ) -> OrtModule:
        """The same graph in a new session with other threads or device (self when equal)."""
        t = self.threads if threads is None else int(threads)
        d = self.device_type if device is None else torch.device(device).type
        if t == self.threads and d == self.device_type:
            return self
        new = copy.copy(self)  # subclass attributes (spec, meta) come along; no tensors to share
        new._open(t, d)
        return new

    def _open(self, threads: int, device: str | torch.device) -> None:
        import onnxruntime as ort

        self.threads = int(threads)
        self.device_type = torch.device(device).type
        self.providers = providers_for(device)
        try:
            self.session = ort.InferenceSession(
                self.onnx_bytes, session_options(self.threads), providers=self.providers
            )
        except Exception as e:  # onnxruntime raises its own exception types for bad graphs
            raise UserError(
                f"ONNX Runtime cannot load this graph: {str(e).splitlines()[0][:200]}"
            ) from None
        self.input_name = self.session.get_inputs()[0].name

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        """The graph's first output for a float32 array."""
        return np.asarray(self.session.run(None, {self.input_name: x})[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `(N, classes)` for images `(N, C, H, W)` (float; returned on the CPU)."""
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.run_numpy(arr))

    @property
    def size_bytes(self) -> int:
        """Size of the ONNX graph in bytes."""
        return len(self.onnx_bytes)

    def extra_repr(self) -> str:
        return f"{self.size_bytes} bytes, threads={self.threads}, providers={self.providers}"


def runtime_spec(example: torch.Tensor, num_classes: int) -> InputSpec:
    """A spec for exporting a model fed `example` when no spec is at hand (timing only: the
    normalisation in its metadata is neutral, mean 0 and std 1).

    Raises:
        UserError: An input that is not a square image batch `(N, C, S, S)`.
    """
    if example.dim() != 4 or example.shape[2] != example.shape[3]:
        raise UserError(
            f"ONNX export here takes square image batches (N, C, S, S), not {tuple(example.shape)}"
        )
    c = int(example.shape[1])
    return InputSpec(c, int(example.shape[2]), (0.0,) * c, (1.0,) * c, max(1, num_classes))


def to_ort(
    model: nn.Module,
    example: torch.Tensor,
    *,
    spec: InputSpec | None = None,
    threads: int = 1,
    device: str | torch.device = "cpu",
) -> OrtModule:
    """Export `model` to ONNX (`export.export_onnx`: dynamic batch, checked against PyTorch on
    `example`) and wrap it in an `OrtModule`.

    Args:
        model: Any exportable model: dense, physically shrunk, low-rank (not modified).
        example: A float input batch `(N, C, S, S)`; its first images are the export check batch.
        spec: The model's input spec (written into the graph's metadata); default
            `runtime_spec(example, ...)`.
        threads: ONNX Runtime intra-op threads.
        device: `cpu` or `cuda`.

    Raises:
        UserError: The model cannot be exported, or its ONNX output differs from PyTorch's.
    """
    from pruning_core.export import export_onnx
    from pruning_core.layers import main_logits

    x = example.detach().float().cpu()[:8]
    if spec is None:
        with torch.inference_mode():
            net = model.eval()
            k = int(main_logits(net(x[:1].to(_device_of(net)))).shape[-1])
        spec = runtime_spec(x, k)
    with tempfile.TemporaryDirectory(prefix="pruning-lab-ort-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, spec, path, example=x)
        return OrtModule(path.read_bytes(), threads=threads, device=device)


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def provider_names(providers: Sequence[str]) -> str:
    """`CPU` / `CUDA` for a providers list, in words for a table."""
    return " + ".join(p.replace("ExecutionProvider", "") for p in providers)
