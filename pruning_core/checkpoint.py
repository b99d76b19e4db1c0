"""Reading and writing model weights safely.

A model directory (written by `train`, `prune` and the sample-model script) holds
`model.safetensors` (tensors only, nothing executable) and `model.json` (architecture name and
arguments, input spec, and the *surgery* that turns a freshly built architecture into the saved
shape: module attributes changed by structured pruning, submodules replaced by identities).
Reloading never unpickles code. A zip of a model directory (what `export --format checkpoint
--out FILE.zip` and the app's Export page write) loads too: `unzipped_model` extracts it with the
dataset archives' checks (`data.archive.safe_extract_zip`: no `..`, absolute paths or links,
bounded entries and bytes) into a temporary folder that is removed once the model is read.

Tensor policy (every checkpoint file, model directory and upload goes through `read_state_file`
and `check_state_dict`): each entry must be a dense tensor; complex and quantized tensors are
refused; a tensor whose model counterpart is floating must be floating (bool and integer weights
are refused, never cast), and an integer buffer (BatchNorm's `num_batches_tracked`) must stay
integer; every floating tensor must be finite. A NaN/inf weight is refused with a message naming
the tensor: silently "cleaning" it would change the user's model, and pruning a NaN layer makes
every threshold meaningless.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning_core.errors import UserError, first_line, shown
from pruning_core.fsio import atomic_path, clean_stale, temp_prefix, write_json
from pruning_core.surgery import surgery_of

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "MAX_MODEL_ZIP_BYTES",
    "MAX_MODEL_ZIP_FILES",
    "META_FILE",
    "MODEL_FILE",
    "MODEL_ZIP_SUFFIX",
    "QUANT_META_FILE",
    "QUANT_ONNX_FILE",
    "check_loaded_finite",
    "check_state_dict",
    "check_tensors",
    "dtype_kind",
    "is_model_zip",
    "is_quantized_dir",
    "load_state",
    "nonfinite_count",
    "read_model_dir",
    "read_model_meta",
    "read_model_state",
    "read_state_file",
    "read_zipped_meta",
    "save_model_dir",
    "state_versions",
    "unzipped_model",
]

MODEL_FILE = "model.safetensors"
# Checkpoint files by suffix (anything else is a registry name or a model folder).
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
META_FILE = "model.json"
# An int8 folder (`quantize.quantize`): the graph and what was measured. Named here, beside the
# float model folder's files, so that loaders can tell the two apart without importing ONNX.
QUANT_ONNX_FILE = "model.onnx"
QUANT_META_FILE = "quantized.json"
# A zipped model directory (the Export page's download, `export --format checkpoint --out X.zip`).
MODEL_ZIP_SUFFIX = ".zip"
# A model folder is a handful of files; its weights are at most those of the largest model the
# loader builds (`models.validate.MAX_PARAMS`, 1e9 float32 parameters: 4e9 bytes) plus JSON.
MAX_MODEL_ZIP_FILES = 64
MAX_MODEL_ZIP_BYTES = 4 << 30
# Temporary extractions carry this name and the process id (`fsio.temp_prefix`), so the next
# load removes those of killed runs (`fsio.clean_stale`).
_ZIP_TMP_NAME = "pruning-lab-model-zip"
# Largest model.json read straight out of a zip (`read_zipped_meta`).
_MAX_ZIPPED_META_BYTES = 1 << 20


def is_quantized_dir(directory: Path | str) -> bool:
    """True when `directory` holds a quantized model (`model.onnx` and `quantized.json`)."""
    d = Path(directory)
    return (d / QUANT_ONNX_FILE).is_file() and (d / QUANT_META_FILE).is_file()


def dtype_kind(dtype: torch.dtype) -> str:
    """`floating`, `integer`, `bool` or `complex` (quantized dtypes count as integer)."""
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "floating" if dtype.is_floating_point else "integer"


def check_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], arch: str, *, source: str = "checkpoint"
) -> None:
    """Check that `state` fits `model`: the same keys, shapes and kinds of dtype.

    A tensor whose model counterpart is floating must be floating (bool and integer weights are
    refused, not cast) and an integer buffer such as `num_batches_tracked` must be integer.

    Args:
        model: The model (its tensors may live on the `meta` device).
        state: The saved tensors.
        arch: Architecture name for the message.
        source: What the tensors came from (`checkpoint FILE`).

    Raises:
        UserError: Naming the first mismatching keys and shapes, or the first tensor of the
            wrong kind of dtype.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shape:
        parts = []
        if shape:
            parts.append("shape mismatch " + "; ".join(shape[:3]))
        if missing:
            parts.append("missing keys " + ", ".join(shown(k) for k in missing[:3]))
        if unexpected:
            parts.append("unexpected keys " + ", ".join(shown(k) for k in unexpected[:3]))
        raise UserError(f"{source} does not fit architecture '{arch}': " + " | ".join(parts))
    for k, v in own.items():
        want, got = dtype_kind(v.dtype), dtype_kind(state[k].dtype)
        if want != got:
            raise UserError(
                f"{source}: tensor {k!r} is {_dtype_name(state[k].dtype)} but the model's is "
                f"{want} ({_dtype_name(v.dtype)}); refusing it (tensors are never cast across kinds)"
            )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_tensors(state: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """Refuse entries that are not dense real tensors, and floating tensors with NaN/inf.

    Args:
        state: Name -> value, as read from a file.
        source: What it came from, for messages (`checkpoint model.pt`).

    Returns:
        The same mapping as a plain dict of tensors.

    Raises:
        UserError: An entry that is not a tensor, a sparse/quantized/complex tensor, or a
            floating tensor holding NaN or inf (the message counts them and names the tensor).
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise UserError(
                f"{source}: entry {k!r} is a {type(v).__name__}, not a tensor; refusing it"
            )
        if v.layout != torch.strided:
            raise UserError(f"{source}: tensor {k!r} is {v.layout} (only dense tensors load)")
        if v.device.type != "cpu":
            # A meta tensor has a shape but no values; nothing else can come out of a file.
            raise UserError(f"{source}: tensor {k!r} is on the {v.device.type} device (no values)")
        if v.is_quantized or v.dtype.is_complex:
            raise UserError(
                f"{source}: tensor {k!r} is {_dtype_name(v.dtype)}; refusing it (model weights are "
                "real floating point)"
            )
        if v.dtype.is_floating_point:
            bad = nonfinite_count(v)
            if bad:
                raise UserError(f"{source}: tensor {k!r} holds {bad} NaN/inf values; refusing it")
        out[str(k)] = v
    return out


def nonfinite_count(t: torch.Tensor) -> int:
    """How many entries of a floating tensor are NaN or +-inf (0 for other dtypes)."""
    if not t.dtype.is_floating_point:
        return 0
    try:
        return int((~torch.isfinite(t.detach())).sum())
    except (RuntimeError, NotImplementedError):  # float8 kernels are missing on some devices
        return int((~torch.isfinite(t.detach().float())).sum())


def check_loaded_finite(model: nn.Module, source: str) -> None:
    """Refuse a model whose floating tensors are not finite after loading.

    Finite float64 values beyond float32's range become inf when copied into a float32 model,
    so the file's own check is not enough.

    Raises:
        UserError: Naming the first such tensor.
    """
    for k, v in model.state_dict().items():
        bad = nonfinite_count(v)
        if bad:
            raise UserError(
                f"{source}: tensor {k!r} holds {bad} values that are NaN/inf in the model's "
                f"{_dtype_name(v.dtype)}; refusing it"
            )


def read_state_file(
    path: Path, *, trust: bool = False, label: str | None = None
) -> tuple[dict[str, torch.Tensor] | nn.Module, dict[str, Any]]:
    """Read weights from `.safetensors`, `.pt`/`.pth` (state_dict) or a trusted pickled module.

    Every tensor goes through `check_tensors` (dense, real, finite). Scalars beside the tensors
    (`epoch`, `lr`) are metadata; any other non-tensor entry is refused.

    Args:
        path: The file.
        trust: Allow a full pickle (which can run arbitrary code). Off unless the user says so.
        label: How messages name the file (default: its name).

    Returns:
        (state_dict or whole module, extra metadata found beside the tensors).

    Raises:
        UserError: Missing, unreadable, corrupt or untrusted-pickle files, entries that are not
            tensors, tensors of refused dtypes or with NaN/inf values.
    """
    name = label or path.name
    source = f"checkpoint {name}"
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a directory without {MODEL_FILE}")
    if not path.is_file():
        # A pipe or a device would block the read forever or never end.
        raise UserError(f"{shown(str(path))} is not a regular file")
    meta: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load, load_file

        try:
            try:
                os.fsencode(path).decode("utf-8")
                tensors = dict(load_file(str(path)))
            except UnicodeDecodeError:
                # safetensors takes UTF-8 paths only; a folder of another encoding is read here.
                tensors = dict(load(path.read_bytes()))
        except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
            raise UserError(f"corrupt safetensors file {name}: {first_line(e)}") from None
        return check_tensors(tensors, source), meta
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not _looks_like_torch_file(path):
            raise UserError(f"corrupt checkpoint {name}: not a PyTorch file") from None
        if not trust:
            raise UserError(
                f"refusing to unpickle {name}: it holds Python objects that could run code "
                "(load it with --trust-pickle only if you trust its source)"
            ) from None
        obj = _trusted_load(path, e)
    except Exception as e:  # torch raises many types for damaged files; all mean "corrupt"
        raise UserError(f"corrupt checkpoint {name}: {first_line(e)}") from None
    if isinstance(obj, nn.Module):
        return obj, meta
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                meta = {
                    k: v for k, v in obj.items() if k != key and isinstance(v, str | int | float)
                }
                obj = inner
                break
            if isinstance(inner, nn.Module):
                return inner, meta
        # Plain scalars beside the tensors are metadata (`epoch`); anything else is refused.
        entries = {k: v for k, v in obj.items() if not _is_scalar(v)}
        if any(isinstance(v, torch.Tensor) for v in entries.values()):
            return check_tensors(entries, source), meta
    raise UserError(f"{name} holds no state_dict (a mapping of tensor names to tensors)")


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def _trusted_load(path: Path, err: Exception) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"cannot load trusted pickle {path.name}: {first_line(e)}") from None


def _looks_like_torch_file(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4)
    return head.startswith(b"PK") or head[:1] == b"\x80"


def save_model_dir(
    directory: Path,
    model: nn.Module,
    meta: dict[str, Any],
    reference: nn.Module | None = None,
) -> None:
    """Write `model.safetensors` + `model.json` into `directory`, atomically per file.

    Args:
        directory: Output directory (created).
        model: The model to save (moved to CPU copies of its tensors).
        meta: At least `arch`, `arch_kwargs` and `spec`; kept in model.json.
        reference: A freshly built model of the same architecture; when given, the surgery that
            maps it onto `model` (structured pruning) is recorded so that loading can rebuild it.
    """
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    full = model.state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in full.items()}
    meta = dict(meta)
    if reference is not None:
        meta["surgery"] = surgery_of(model, reference)
    meta["state_versions"] = state_versions(full)
    with atomic_path(directory / MODEL_FILE) as tmp:
        save_file(_dedupe_shared(state), str(tmp))
    write_json(directory / META_FILE, meta)


def state_versions(state: Mapping[str, Any]) -> dict[str, int]:
    """The per-module format versions a state dict carries (`state_dict()._metadata`): some
    modules read them when loading (torchvision's MnasNet refuses a state without them)."""
    meta = getattr(state, "_metadata", None) or {}
    return {k: int(v["version"]) for k, v in meta.items() if isinstance(v.get("version"), int)}


def load_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], versions: Mapping[str, int] | None = None
) -> None:
    """`model.load_state_dict(state)` with the module format versions attached (`versions` as
    recorded beside the tensors; for files without them, the model's own, which is what the
    tensors were saved from with this library version)."""
    own = getattr(model.state_dict(), "_metadata", None) or {}
    metadata = {k: dict(v) for k, v in own.items()}
    for prefix, version in (versions or {}).items():
        metadata.setdefault(prefix, {})["version"] = version
    full: Any = OrderedDict(state)
    full._metadata = metadata
    model.load_state_dict(full)


def _dedupe_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (tied weights); clone those.
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        out[k] = v.clone() if ptr in seen else v
        if ptr != -1:
            seen.add(ptr)
    return out


def read_model_meta(directory: Path) -> dict[str, Any]:
    """The decoded `model.json` of a model directory (checked later by `models.validate`).

    Raises:
        UserError: Not a model directory, or model.json is not a JSON object.
    """
    meta_path = directory / META_FILE
    if not meta_path.is_file() or not (directory / MODEL_FILE).is_file():
        raise UserError(
            f"{directory} is not a model directory (needs {MODEL_FILE} and {META_FILE})"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, RecursionError) as e:  # JSON, encoding, over-long integers
        raise UserError(f"corrupt {META_FILE} in {directory}: {first_line(e)}") from None
    except OSError as e:
        raise UserError(f"cannot read {meta_path}: {first_line(e)}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path} must hold a JSON object, got {type(meta).__name__}")
    if "arch" not in meta:
        raise UserError(f"{meta_path} names no architecture ('arch')")
    return meta


def read_model_state(directory: Path) -> dict[str, torch.Tensor]:
    """The checked tensors of a model directory's `model.safetensors` (see `check_tensors`)."""
    state, _ = read_state_file(directory / MODEL_FILE, label=str(directory / MODEL_FILE))
    assert isinstance(state, dict)
    return state


def read_model_dir(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a model directory's tensors and metadata (no code is unpickled).

    Raises:
        UserError: Not a model directory, unreadable model.json, refused tensors.
    """
    meta = read_model_meta(directory)
    return read_model_state(directory), meta


def is_model_zip(ref: Path | str) -> bool:
    """True when `ref` names an existing `.zip` file (a zipped model directory, if anything)."""
    return str(ref).lower().endswith(MODEL_ZIP_SUFFIX) and Path(ref).is_file()


def _zip_folder(root: Path, name: str) -> Path:
    """The model folder inside an extracted zip: its top, or the one folder at its top."""
    tops = [p for p in root.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    folders = [p for p in tops if p.is_dir() and not p.is_symlink()]
    for cand in (root, *(folders if len(folders) == 1 else ())):
        if (cand / META_FILE).is_file() or is_quantized_dir(cand):
            return cand
    raise UserError(
        f"{name} holds no model folder ({META_FILE} and {MODEL_FILE}, at its top or in its one "
        "folder): pass a zip from `export --format checkpoint` or the app's Export page, or a "
        "model folder"
    )


@contextlib.contextmanager
def unzipped_model(path: Path, *, label: str | None = None) -> Iterator[Path]:
    """Extract a zipped model directory safely and yield the model folder inside it.

    Extraction is `data.archive.safe_extract_zip` (the checks of dataset uploads: no absolute
    paths, `..`, links or encryption; at most `MAX_MODEL_ZIP_FILES` entries and
    `MAX_MODEL_ZIP_BYTES` uncompressed bytes, counted while streaming) into a temporary folder
    of the system's temporary directory, removed when the block ends, however it ends. A
    killed run's folder is removed by the next call. The folder is the zip's top when it holds
    `model.json` (or an int8 model's `quantized.json`), else its one top-level folder.
    Messages raised inside the block name the zip, not the temporary folder.

    Args:
        path: The `.zip` file.
        label: How messages name it (default: its path), e.g. an upload's original name.

    Yields:
        The extracted model folder (read it inside the block: it is gone afterwards).

    Raises:
        UserError: Not a readable zip, an unsafe entry, too many entries or bytes, no model
            folder inside, a temporary directory that cannot be written, or any UserError of
            the block (with the temporary folder's path replaced by the zip's name).
    """
    from pruning_core.data.archive import safe_extract_zip

    path = Path(path)
    name = label or str(path)
    base = Path(tempfile.gettempdir())
    clean_stale(base, _ZIP_TMP_NAME)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(_ZIP_TMP_NAME), dir=base))
    except OSError as e:
        raise UserError(
            f"cannot unzip {name}: {base} is not writable ({e.strerror or e})"
        ) from None
    root = tmp / "model"
    try:
        try:
            safe_extract_zip(
                path, root, max_files=MAX_MODEL_ZIP_FILES, max_bytes=MAX_MODEL_ZIP_BYTES
            )
            yield _zip_folder(root, name)
        except UserError as e:
            text = str(e).replace(str(root), name)
            text = text.replace(str(path), name) if label else text
            # An unsafe entry's message names the entry only: say which zip it is in.
            raise UserError(text if name in text else f"{name}: {text}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_zipped_meta(path: Path | str) -> dict[str, Any] | None:
    """The `model.json` (or an int8 model's `quantized.json`) of a zipped model folder, read
    in memory without extracting anything, for what only needs the description (the dataset
    a model names). The folder is found as `unzipped_model` finds it.

    Returns:
        The decoded JSON object, or None when the zip holds none, or it is over 1 MiB,
        unreadable or not an object. Never raises: loading the model says what is wrong.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename.replace("\\", "/").strip("/"): i for i in zf.infolist()}
            tops = {n.split("/", 1)[0] for n in infos if "/" in n}
            tops -= {t for t in tops if t.startswith(".") or t == "__MACOSX"}
            for folder in ("", *(f"{t}/" for t in tops if len(tops) == 1)):
                for name in (META_FILE, QUANT_META_FILE):
                    info = infos.get(folder + name)
                    if info is None or info.file_size > _MAX_ZIPPED_META_BYTES:
                        continue
                    with zf.open(info) as f:
                        doc = json.loads(f.read(_MAX_ZIPPED_META_BYTES + 1))
                    return doc if isinstance(doc, dict) else None
    except (zipfile.BadZipFile, OSError, ValueError, RecursionError, EOFError, RuntimeError):
        return None
    return None
