"""Architectures from torchvision and timm in the app: found with a search box, built once for
the session's dataset and kept as an ordinary model folder under the data directory.

A `torchvision:NAME` or `timm:NAME` is an architecture, not a model: it needs the dataset's
classes, channels and an input size it runs at (`models.build_for_data`). The app builds it the
first time it is picked for a dataset, saves it (`<data home>/architectures/`), and from then on
uses the folder like any model the user brought; picking another dataset rebuilds it for that one.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import streamlit as st

from pruning_core.checkpoint import save_model_dir
from pruning_core.errors import UserError, first_line
from pruning_core.export import is_model_dir
from pruning_core.fsio import output_dir
from pruning_core.models import build_for_data, get_entry, is_external, list_models
from pruning_core.store import data_home
from ui.loaders import shared_data
from ui.pairing import follow_model

__all__ = [
    "SEARCH_LIMIT",
    "describe",
    "on_dataset_change",
    "on_model_change",
    "prepare",
    "prepared_from",
    "search",
    "use_searched",
]

SEARCH_LIMIT = 60
_PREPARED = "prepared"


def search(query: str) -> tuple[list[str], int]:
    """torchvision and timm architectures whose name matches `query` (substring or glob):
    (the first SEARCH_LIMIT names, how many matched)."""
    q = query.strip()
    if not q:
        return [], 0
    names = [e.name for e in list_models(filter=q) if is_external(e)]
    return names[:SEARCH_LIMIT], len(names)


def _folder(arch: str, dataset_ref: str, pretrained: bool) -> Path:
    key = hashlib.sha256(f"{arch}\0{dataset_ref}\0{pretrained}".encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", arch)[:80]
    return data_home() / "architectures" / f"{safe}-{key}"


def prepare(arch: str, dataset_ref: str, pretrained: bool = False) -> str:
    """The model folder of `arch` built for `dataset_ref` (built and saved the first time).

    Raises:
        UserError: Unknown architecture, no input size it runs at, weights that cannot be
            fetched, or a dataset that cannot be read.
    """
    entry = get_entry(arch)
    if not is_external(entry):
        raise UserError(f"{arch} is not a torchvision or timm architecture")
    out = _folder(entry.name, dataset_ref, pretrained)
    if is_model_dir(out):
        return str(out)
    data = shared_data(dataset_ref)
    built = build_for_data(
        entry.name, data.num_classes, data.channels, data.size, pretrained=pretrained
    )
    meta = {
        "arch": entry.name,
        "arch_kwargs": built.arch_kwargs,
        "spec": built.spec.to_dict(),
        "dataset": dataset_ref,
        _PREPARED: {"arch": entry.name, "dataset": dataset_ref, "pretrained": pretrained},
    }
    with output_dir(out) as tmp:
        save_model_dir(tmp, built.model, meta)
    return str(out)


def prepared_from(ref: str) -> dict[str, Any] | None:
    """What a folder made by `prepare` was built from ({arch, dataset, pretrained}), else None."""
    path = Path(ref)
    if not path.is_dir() or data_home() / "architectures" != path.parent:
        return None
    try:
        info = json.loads((path / "model.json").read_text(encoding="utf-8")).get(_PREPARED)
    except (OSError, ValueError, AttributeError):  # not ours after all: an ordinary folder
        return None
    return info if isinstance(info, dict) else None


def describe(ref: str) -> str | None:
    """A select-box label for a prepared folder ("timm:resnet18, built for digits")."""
    info = prepared_from(ref)
    if info is None:
        return None
    weights = "ImageNet weights" if info.get("pretrained") else "untrained"
    return f"{info.get('arch')} — {weights}, built for {info.get('dataset')}"


def _switch(arch: str, pretrained: bool) -> None:
    """Point the session at `arch` built for its dataset; a refusal is kept for the page."""
    st.session_state.pop("arch_error", None)
    try:
        st.session_state["model_ref"] = prepare(arch, st.session_state["dataset_ref"], pretrained)
    except UserError as e:
        st.session_state["arch_error"] = f"{arch}: {first_line(e, 300)}"
        st.session_state["model_ref"] = st.session_state.get("_last_model_ref", "digits-cnn")


def on_model_change() -> None:
    """Select-box callback: an architecture name becomes its folder for the current dataset;
    a trained model brings its own dataset (`pairing.follow_model`)."""
    ref = st.session_state["model_ref"]
    if ref.startswith(("torchvision:", "timm:")):
        _switch(ref, pretrained=False)
    follow_model()
    st.session_state["_last_model_ref"] = st.session_state["model_ref"]


def on_dataset_change() -> None:
    """Dataset callback: a prepared architecture is rebuilt for the new dataset."""
    info = prepared_from(st.session_state["model_ref"])
    if info is not None and info.get("dataset") != st.session_state["dataset_ref"]:
        _switch(str(info["arch"]), bool(info.get("pretrained")))


def use_searched() -> None:
    """Button callback: use the architecture picked in the search results."""
    arch = st.session_state.get("arch_pick")
    if arch:
        _switch(str(arch), bool(st.session_state.get("arch_pretrained")))
        st.session_state["_last_model_ref"] = st.session_state["model_ref"]
