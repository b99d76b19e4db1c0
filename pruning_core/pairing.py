"""Which dataset goes with a model, for the app and the CLI alike.

A model's *home* dataset is the registry's `default_dataset` for a named model, or the
`dataset` its folder (or a zip of it) names (`model.json` of sample models, `train` and `prune`
outputs and prepared architectures; `quantized.json` of an int8 folder). Unknown homes (a bare
checkpoint, a library architecture) are never flagged. A dataset of the same class count feeds
any model (images are resized and converted), so a mismatch is a warning, not an error: the
accuracy of a model on data it was not trained for says little about pruning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pruning_core.checkpoint import (
    META_FILE,
    QUANT_META_FILE,
    is_model_zip,
    read_model_meta,
    read_zipped_meta,
    unzipped_model,
)
from pruning_core.errors import UserError
from pruning_core.models import get_entry

__all__ = ["dataset_mismatch", "home_dataset", "no_home_reason", "trained_on"]


def home_dataset(model_ref: str) -> str | None:
    """The dataset `model_ref` was trained or built for, or None when nothing says.

    Args:
        model_ref: A registry name, a model folder, an int8 folder or a zip of either (a
            checkpoint file or a library architecture has no known home).

    Returns:
        The dataset reference its registry entry or folder names, or None. Never raises: an
        unreadable folder or an unknown name has no known home.
    """
    path = Path(model_ref)
    if path.is_dir():
        for name in (META_FILE, QUANT_META_FILE):
            try:
                meta = json.loads((path / name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            named = meta.get("dataset") if isinstance(meta, dict) else None
            return named if isinstance(named, str) and named else None
        return None
    if is_model_zip(path):
        meta = read_zipped_meta(path)
        named = meta.get("dataset") if meta else None
        return named if isinstance(named, str) and named else None
    if path.exists() or ":" in model_ref:  # a checkpoint file or a library architecture
        return None
    try:
        return get_entry(model_ref).default_dataset
    except UserError:
        return None


def no_home_reason(model_ref: str) -> str:
    """Why `model_ref` gives no dataset of its own, for a command that needs one.

    Raises:
        UserError: The model itself is the problem: an unknown name, a folder whose
            model.json is missing or unreadable, or a zip that is unsafe or holds no model
            folder (the loader's own message), which a "give --dataset" would only hide.
    """
    path = Path(model_ref)
    if path.is_dir() and not (path / QUANT_META_FILE).is_file():
        read_model_meta(path)
    elif is_model_zip(path) and read_zipped_meta(path) is None:
        with unzipped_model(path):  # says why it holds no model
            pass
    elif not path.exists() and ":" not in model_ref:
        get_entry(model_ref)
    return f"{model_ref} names no dataset"


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def trained_on(model_ref: str, depth: int = 0) -> str | None:
    """The dataset `model_ref`'s weights were trained on: what a pruned folder's `model.json`
    records (`trained_on`, written when it was pruned, so a copied folder or one whose source
    is gone keeps it), else following it back to the model it was pruned from (its recipe's
    `model`): pruning there, fine-tune included, does not make another dataset the weights'
    own. None when nothing says (an untrained registry model, an older folder whose source is
    no longer where its recipe names it). Never raises."""
    path = Path(model_ref)
    if is_model_zip(path):
        meta: Any = read_zipped_meta(path)
    elif not path.is_dir():
        if path.exists() or ":" in model_ref or depth == 0:
            return None
        try:
            entry = get_entry(model_ref)
        except UserError:
            return None
        return entry.default_dataset if entry.sample else None
    else:
        try:
            meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            # An int8 folder: its weights are those of the float model it names as its source.
            quant = _read_json(path / QUANT_META_FILE)
            source = quant.get("source") if isinstance(quant, dict) else None
            if isinstance(source, str) and source and depth < 8:
                return trained_on(source, depth + 1)
            return None
    if not isinstance(meta, dict):
        return None
    recorded = meta.get("trained_on")
    if isinstance(recorded, str) and recorded:
        return recorded
    recipe = meta.get("recipe")
    settings = recipe.get("settings") if isinstance(recipe, dict) else None
    source = settings.get("model") if isinstance(settings, dict) else None
    if isinstance(source, str) and source and depth < 8:
        return trained_on(source, depth + 1)  # a `prune` output: its source's
    named = meta.get("dataset")  # trained there (`train`), or a sample's own folder
    return named if isinstance(named, str) and named else None


def dataset_mismatch(model_ref: str, dataset_ref: str) -> str | None:
    """One line when `dataset_ref` is not the dataset the model was trained for, else None.

    Args:
        model_ref: As `home_dataset` takes it.
        dataset_ref: The dataset reference given (a registry name, `idx:DIR`, ...).

    Returns:
        The sentence, only when both the home and `dataset_ref` are registry datasets and
        differ (a path is never flagged: it may hold the very data of a registry name).
    """
    from pruning_core.data import list_datasets

    home = recorded = home_dataset(model_ref)
    # A folder pruned on another dataset records that one, but its weights were trained on
    # its source's: that is the dataset its accuracy means something on.
    trained = trained_on(model_ref)
    if trained is not None:
        home = trained
    names = {d.name for d in list_datasets()}
    # Only two different registry names are surely different data: `idx:DIR` may well be
    # the MNIST a `mnist` model was trained on, and a folder's path may be written two ways.
    if home is None or home == dataset_ref or home not in names or dataset_ref not in names:
        return None
    name = Path(model_ref).name if Path(model_ref).is_dir() else model_ref
    how = (
        f" (it was pruned on {recorded}, which its folder records)"
        if recorded is not None and recorded != home
        else ""
    )
    return (
        f"{name} was trained on {home}, not on {dataset_ref}{how}: its accuracy here says "
        f"little about pruning (pick {home}, or fine-tune it on {dataset_ref} first)."
    )
