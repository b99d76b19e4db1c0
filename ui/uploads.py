"""Uploads: the user's own checkpoint (with an architecture picker) and an ImageFolder zip.

Uploaded bytes are untrusted. A checkpoint is read with `weights_only=True` (through
`pruning_core.models.load_model`): a pickle that would run code is refused without running it.
A zipped model folder (the Export page's download) is extracted by `load_model` with the
dataset zips' checks and loaded with the architecture its model.json names.
An accepted checkpoint is re-saved as a model directory (safetensors + model.json) under the
data directory, so every page and the command line load it by path without knowing the
architecture. A dataset zip is saved under the data directory and opened by
`pruning_core.data`, which extracts it defensively (no `..`, no links, size and count limits).
Everything is written atomically and a refused upload leaves nothing behind: the data folders
are probed for writing before any work starts, temporaries carry the process id
(`fsio.temp_prefix`) and the next upload removes those of killed runs (`fsio.clean_stale`), and
a failure to write (disk full) is one error line like any refused input.

`save_checkpoint_upload` and `save_dataset_upload` hold the logic (no widgets; tested
directly); `upload_panel()` is the Streamlit panel the Model & data page shows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st

from pruning_core.checkpoint import CHECKPOINT_SUFFIXES, MODEL_ZIP_SUFFIX, save_model_dir
from pruning_core.data import data_root, load_dataset
from pruning_core.data.archive import clean_cache
from pruning_core.errors import UserError
from pruning_core.fsio import atomic_path, check_writable_dir, clean_stale, output_dir, temp_prefix
from pruning_core.models import get_entry, load_model, model_choices
from pruning_core.store import data_home
from ui.state import init_state

# Keep in step with `server.maxUploadSize` in .streamlit/config.toml (the browser-side limit).
MAX_UPLOAD_MB = 200
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 2**20


def uploads_dir() -> Path:
    """Where accepted uploads are kept (`<data home>/uploads`)."""
    return data_home() / "uploads"


def uploaded_name(ref: str) -> str | None:
    """How the app names an uploaded model: the file the user uploaded ("my model.zip
    (uploaded)", as its `model.json` records it), not the server path it is kept under; None
    for any other reference. Never raises."""
    path = Path(ref)
    try:
        if path.parent.resolve() != (uploads_dir() / "models").resolve():
            return None
        meta = json.loads((path / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    up = meta.get("uploaded") if isinstance(meta, dict) else None
    name = up.get("file") if isinstance(up, dict) else None
    return f"{name} (uploaded)" if isinstance(name, str) and name else None


def _check_folders(data: bool = False) -> None:
    """Refuse, before any work, an upload that could not be kept (unwritable home or cache)."""
    home = "PRUNING_LAB_HOME" if os.environ.get("PRUNING_LAB_HOME") else "data folder"
    check_writable_dir(data_home(), home)
    if data:
        cache = "PRUNING_LAB_DATA" if os.environ.get("PRUNING_LAB_DATA") else "dataset folder"
        check_writable_dir(data_root(), cache)


def _folder(path: Path) -> Path:
    """Create an uploads folder and remove what killed uploads left in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e})") from None
    clean_stale(path)
    return path


def _stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(name).stem).strip("-.")
    return (stem or "upload")[:40]


def _check_bytes(name: str, data: bytes, suffixes: tuple[str, ...], limit: int) -> str:
    suffix = Path(name).suffix.lower()
    if suffix not in suffixes:
        raise UserError(f"{name}: expected a {' / '.join(suffixes)} file, got '{suffix or 'none'}'")
    if len(data) == 0:
        raise UserError(f"{name} is empty")
    if len(data) > limit:
        raise UserError(
            f"{name} is {len(data) / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB upload limit"
        )
    return suffix


def save_checkpoint_upload(
    name: str,
    data: bytes,
    arch: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: int | None = None,
    limit: int = MAX_UPLOAD_BYTES,
) -> str:
    """Check an uploaded state_dict / safetensors file or model zip and keep it as a model
    directory.

    Args:
        name: The uploaded file's name (its suffix says the format).
        data: Its bytes.
        arch: Registry architecture the weights belong to (a model zip names its own, and
            keeps its description: dataset, pruning record, recipe).
        num_classes, in_channels, image_size: Override the architecture's defaults.
        limit: Largest accepted size in bytes.

    Returns:
        The model directory's path: a model reference every page and `--model` accept.

    Raises:
        UserError: Wrong suffix, empty or too large, corrupt, a pickle that is not plain
            tensors, weights that do not fit the architecture, an unsafe zip or one without a
            model folder, or a data folder that cannot be written (unwritable, disk full).
            Nothing is left behind.
    """
    suffix = _check_bytes(name, data, (*CHECKPOINT_SUFFIXES, MODEL_ZIP_SUFFIX), limit)
    entry = get_entry(arch)
    _check_folders()
    digest = hashlib.sha256(data).hexdigest()[:12]
    root = _folder(uploads_dir() / "models")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix("upload"), suffix=suffix, dir=root)
    except OSError as e:
        raise UserError(f"cannot write {root} ({e.strerror or e})") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        loaded = load_model(
            str(tmp),
            arch=arch,
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            label=name,
        )
        kwargs = loaded.arch_kwargs
        kept: dict[str, Any] = {}
        if suffix == MODEL_ZIP_SUFFIX and loaded.arch is not None:
            arch, entry = loaded.arch, get_entry(loaded.arch)
            kwargs = loaded.meta.get("arch_kwargs") or kwargs
            # The surgery and format versions are recorded afresh by save_model_dir.
            kept = {k: v for k, v in loaded.meta.items() if k not in ("surgery", "state_versions")}
        target = root / f"{_stem(name)}-{arch.replace(':', '-')}-{digest}"
        meta: dict[str, Any] = {
            **kept,
            "arch": arch,
            "arch_kwargs": kwargs,
            "spec": loaded.spec.to_dict(),
            "uploaded": {"file": name, "sha256_12": digest},
        }
        with output_dir(target) as out:
            save_model_dir(out, loaded.model, meta, reference=entry.builder(**kwargs))
    except OSError as e:
        raise UserError(f"{name} could not be saved under {root} ({e.strerror or e})") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return str(target)


def save_dataset_upload(name: str, data: bytes, *, limit: int = MAX_UPLOAD_BYTES) -> str:
    """Keep an uploaded ImageFolder zip (one folder per class) once it opens as a dataset.

    Returns:
        The zip's path: a dataset reference every page and `--dataset` accept.

    Raises:
        UserError: Not a .zip, empty or too large, unsafe entries (`..`, absolute paths,
            links), too many files or bytes, no class folders with images, an unreadable or
            too large image, or a data folder that cannot be written (unwritable, disk full).
            Nothing is left behind: neither the zip nor what was extracted from it.
    """
    _check_bytes(name, data, (".zip",), limit)
    _check_folders(data=True)
    digest = hashlib.sha256(data).hexdigest()[:12]
    target = _folder(uploads_dir() / "datasets") / f"{_stem(name)}-{digest}.zip"
    # The same bytes kept by an earlier upload may be another session's current dataset:
    # only a zip written by this call is removed when it is refused.
    wrote = not target.is_file()
    try:
        if wrote:
            with atomic_path(target) as tmp:
                tmp.write_bytes(data)
        bundle = load_dataset(str(target))
        if bundle.num_classes < 2:
            raise UserError(f"{name}: found {bundle.num_classes} class folder; need at least 2")
    except BaseException as e:
        if wrote:
            with contextlib.suppress(OSError):
                target.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise UserError(f"{name} could not be saved ({e.strerror or e})") from None
        raise
    return str(target)


# --- the panel ----------------------------------------------------------------------------------


def _architectures() -> list[str]:
    names = [name for name, _ in model_choices()]
    # Any torchvision or timm architecture found with the search box on Model & data.
    picked = st.session_state.get("arch_pick")
    if isinstance(picked, str) and picked and picked not in names:
        names.append(picked)
    return names


def _one_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def _accept(
    file_key: str, target_key: str, missing: str, save: Callable[[Any], str], what: str
) -> None:
    """Save the uploaded file with `save`; on success it becomes the current model or dataset."""
    f = st.session_state.get(file_key)
    st.session_state["upload_msg"] = None
    if f is None:
        st.session_state["upload_error"] = missing
        return
    try:
        ref = save(f)
    except UserError as e:
        st.session_state["upload_error"] = f"{f.name} was not loaded: {_one_line(str(e))}"
        return
    except OSError as e:  # the environment, not the tool: a full or vanished disk
        why = e.strerror or _one_line(str(e))
        st.session_state["upload_error"] = f"{f.name} was not loaded: cannot write ({why})"
        return
    st.session_state[target_key] = ref
    st.session_state["upload_error"] = None
    st.session_state["upload_msg"] = f"Loaded {f.name}{what}."


def _on_checkpoint() -> None:
    arch = st.session_state.get("upload_arch") or "digits-cnn"
    classes = st.session_state.get("upload_classes")
    f = st.session_state.get("upload_ckpt_file")
    zipped = f is not None and f.name.lower().endswith(MODEL_ZIP_SUFFIX)
    _accept(
        "upload_ckpt_file",
        "model_ref",
        "Choose a checkpoint file first.",
        lambda f: save_checkpoint_upload(
            f.name, f.getvalue(), arch, num_classes=int(classes) if classes else None
        ),
        ": it is now the current model" if zipped else f" as {arch}: it is now the current model",
    )


def _on_dataset() -> None:
    _accept(
        "upload_data_file",
        "dataset_ref",
        "Choose a zip file first.",
        lambda f: save_dataset_upload(f.name, f.getvalue()),
        ": it is now the current dataset",
    )


def clean_stale_uploads() -> None:
    """Remove what killed uploads and extractions left (files of dead processes only).

    Never raises: an unreadable folder is left for the next upload to report.
    """
    for folder in (uploads_dir() / "models", uploads_dir() / "datasets"):
        clean_stale(folder)
    clean_cache(data_root() / "archives")


def upload_panel() -> None:
    """An expander to bring your own checkpoint or dataset zip.

    Call it BEFORE the model/dataset pickers: its buttons switch the current selection through
    callbacks (which run before the page is drawn). The first time a session draws it, what
    killed uploads left behind is removed.
    """
    init_state()
    if not st.session_state.get("upload_cleaned"):
        clean_stale_uploads()
        st.session_state["upload_cleaned"] = True
    with st.expander("Use your own model or dataset"):
        err, msg = st.session_state.get("upload_error"), st.session_state.get("upload_msg")
        if err:
            st.error(err)
        elif msg:
            st.success(msg)
        left, right = st.columns(2)
        with left:
            st.markdown(
                "**Checkpoint** (a state_dict `.pt`/`.pth`, `.safetensors`, or a model `.zip` "
                "from Export)"
            )
            st.file_uploader(
                "Checkpoint file",
                type=["pt", "pth", "safetensors", "zip"],
                key="upload_ckpt_file",
                help=f"Up to {MAX_UPLOAD_MB} MB. Read with weights_only=True: a file holding "
                "Python objects (a pickled model) is refused, since unpickling can run code. "
                "A model zip names its own architecture.",
            )
            archs = _architectures()
            st.selectbox(
                "Architecture",
                archs,
                key="upload_arch",
                help="The architecture the weights were trained with: its layer names and "
                "shapes must match the file. Any torchvision or timm architecture picked in "
                "'Bring an architecture' is listed here too.",
            )
            arch = st.session_state.get("upload_arch") or archs[0]
            st.number_input(
                "Classes",
                1,
                100000,
                value=get_entry(arch).spec.num_classes,
                key="upload_classes",
                help="Output classes of the checkpoint's classifier.",
            )
            st.button("Load checkpoint", key="upload_ckpt_go", on_click=_on_checkpoint)
        with right:
            st.markdown("**Dataset** (a `.zip` of one folder per class, ImageFolder style)")
            st.file_uploader(
                "Dataset zip",
                type=["zip"],
                key="upload_data_file",
                help=f"Up to {MAX_UPLOAD_MB} MB. Images are resized to the model's input; "
                "the archive is checked entry by entry before anything is extracted.",
            )
            st.button("Load dataset", key="upload_data_go", on_click=_on_dataset)
