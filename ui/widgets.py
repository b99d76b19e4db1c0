"""Reusable widgets: they read and write session state and return plain values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import streamlit as st

from pruning_core.data import DataBundle, list_datasets
from pruning_core.errors import UserError
from pruning_core.models import LoadedModel, model_choices
from ui import architectures
from ui.caches import dense_unfit_criteria, dense_unfit_granularities
from ui.choices import (
    criterion_choices,
    criterion_label,
    granularities_help,
    granularity_choices,
    granularity_label,
)
from ui.jobs_panel import jobs_sidebar
from ui.loaders import baseline, shared_data, shared_model
from ui.pairing import mismatch, switch_note
from ui.state import init_state
from ui.uploads import uploaded_name


def model_and_data_picker() -> tuple[str, str]:
    """Model and dataset select boxes bound to the session's selection, and a search box for
    any torchvision or timm architecture (built for the dataset: `ui.architectures`)."""
    init_state()
    choices = model_choices()
    models = [name for name, _ in choices]
    labels = {name: f"{name} — {desc}" for name, desc in choices}
    if st.session_state["model_ref"] not in models:
        models.append(st.session_state["model_ref"])
    datasets = [d.name for d in list_datasets()]
    if st.session_state["dataset_ref"] not in datasets:
        datasets.append(st.session_state["dataset_ref"])
    c1, c2 = st.columns(2)
    c1.selectbox(
        "Model",
        models,
        key="model_ref",
        persist_state="session",
        format_func=lambda n: labels.get(n) or architectures.describe(n) or uploaded_name(n) or n,
        on_change=architectures.on_model_change,
        help="Sample models are trained and ship with the app; torchvision and timm "
        "architectures are built for the dataset and start untrained.",
    )
    c2.selectbox(
        "Dataset",
        datasets,
        key="dataset_ref",
        persist_state="session",
        on_change=architectures.on_dataset_change,
        help="digits and shapes work offline; the others download once or read a local copy.",
    )
    _architecture_search()
    info = architectures.prepared_from(st.session_state["model_ref"])
    if info is not None and not info.get("pretrained"):
        st.caption(
            f"{info['arch']} starts untrained, so its accuracy is chance: train it first "
            f"(`pruning-lab train --model {info['arch']} --dataset {info['dataset']} --out DIR`, "
            "then upload the folder), or prune it to see what pruning does to its structure."
        )
    if st.session_state.get("arch_error"):
        st.error(st.session_state["arch_error"])
    note = switch_note(st.session_state["model_ref"], st.session_state["dataset_ref"])
    if note:
        st.info(note)
    return st.session_state["model_ref"], st.session_state["dataset_ref"]


def _architecture_search() -> None:
    with st.expander("Bring an architecture from torchvision or timm"):
        query = st.text_input(
            "Search architectures",
            key="arch_query",
            placeholder="e.g. resnet, mobilenetv3, *vit_tiny*",
            help="A part of the name or a glob; every torchvision and timm classifier is listed.",
        )
        names, total = architectures.search(query)
        if query.strip() and not names:
            st.caption(f"No torchvision or timm architecture matches '{query.strip()}'.")
        if names:
            shown = f"first {len(names)} of {total}" if total > len(names) else str(total)
            st.selectbox(f"Matches ({shown})", names, key="arch_pick")
            st.checkbox(
                "Start from the library's ImageNet weights (downloads once; the classifier is new)",
                key="arch_pretrained",
            )
            st.button(
                "Use this architecture", key="arch_use", on_click=architectures.use_searched,
                help="Builds it for the current dataset at the smallest input size it runs at "
                "and keeps it as a model folder; pruning, fine-tuning and export work as usual.",
            )  # fmt: skip


def cannot_use(model_ref: str, dataset_ref: str, error: UserError) -> str:
    """One line for a model and dataset the pages cannot use: the reason as the engine gave it
    (a corrupt file, a missing one, shapes that do not fit), not a guess at which."""
    return f"Cannot use {model_ref} on {dataset_ref}: {error}"


def baseline_or_stop(model_ref: str, dataset_ref: str) -> dict[str, Any]:
    """The dense model's measured baseline (`ui.loaders.baseline`); when the model or the
    dataset cannot be used (`cannot_use`), says why and stops the page, and when the model was trained
    on another dataset, says so in one line (`pairing.mismatch`)."""
    try:
        base = baseline(model_ref, dataset_ref)
    except UserError as e:
        st.error(cannot_use(model_ref, dataset_ref, e))
        st.stop()
    why = mismatch(model_ref, dataset_ref)
    if why:
        st.warning(why)
    return base


def model_and_data_or_stop(model_ref: str, dataset_ref: str) -> tuple[LoadedModel, DataBundle]:
    """The shared model and dataset, checked to fit together without measuring anything;
    when they cannot be used (`cannot_use`), says why and stops the page."""
    try:
        loaded, data = shared_model(model_ref), shared_data(dataset_ref)
        data.check_spec(loaded.spec)
    except UserError as e:
        st.error(cannot_use(model_ref, dataset_ref, e))
        st.stop()
    return loaded, data


def explain(text: str, label: str = "What is this?") -> None:
    """A collapsed explanation beside a control."""
    with st.expander(label):
        st.markdown(text)


def sidebar_frame() -> None:
    """What every page shows in the sidebar: the current model and dataset, and this session's
    jobs (`ui.jobs_panel.jobs_sidebar`)."""
    init_state()
    with st.sidebar:
        st.caption("Current selection")
        ref = st.session_state["model_ref"]
        st.markdown(
            f"**Model** `{uploaded_name(ref) or ref}`  \n"
            f"**Dataset** `{st.session_state['dataset_ref']}`"
        )
        jobs_sidebar()


def number_formats(df: pd.DataFrame) -> dict[str, Any]:
    """Column settings that write whole numbers with thousands separators (151,306) and other
    numbers with at most four significant decimals, in the reader's locale."""
    out: dict[str, Any] = {}
    for name, dtype in df.dtypes.items():
        if pd.api.types.is_bool_dtype(dtype):
            continue
        col = df[name]
        # Counts read from a frame with gaps arrive as floats: still whole numbers.
        whole = pd.api.types.is_float_dtype(dtype) and bool(
            col.dropna().apply(float.is_integer).all() and col.notna().any()
        )
        if pd.api.types.is_integer_dtype(dtype) or whole:
            out[str(name)] = st.column_config.NumberColumn(format="localized")
        elif pd.api.types.is_float_dtype(dtype):
            out[str(name)] = st.column_config.NumberColumn(format="%.4g")
    return out


def data_table(
    df: pd.DataFrame, *, key: str | None = None, column_config: dict[str, Any] | None = None
) -> None:
    """A table as wide as the page (no index) with readable numbers (`number_formats`);
    `column_config` overrides single columns."""
    st.dataframe(
        df,
        hide_index=True,
        width="stretch",
        column_config={**number_formats(df), **(column_config or {})},
        key=key,
    )


# Per select box key: (model, the choice put in place, the note saying so, why) of the last
# fallback.
_FALLBACKS = "_granularity_fallbacks"
# Per multiselect key: ((model, granularity, the choices left), the note, why) of the last
# criteria left out.
_LEFT_OUT = "_criteria_left_out"


def granularity_select(
    container: Any,
    model_ref: str,
    choices: Sequence[str] | None = None,
    *,
    key: str,
    fallback: str | None = None,
    **kwargs: Any,
) -> str:
    """A granularity select box in `container` under `key` (other keyword arguments go to
    `st.selectbox`) offering what the model takes: `choices` (default: every granularity) less
    those the model refuses (`ui.choices.unfit_granularities`). A kept value the model cannot
    take (picked for another model) becomes `fallback` when offered (the panel's default),
    else the first offered, with one line under the box saying so, shown while that value and
    the model stay.

    Returns:
        The granularity picked.
    """
    unfit = dense_unfit_granularities(model_ref)
    offered = [g for g in choices if g not in unfit] if choices is not None else None
    options = offered if offered is not None else granularity_choices(unfit)
    kwargs.setdefault("help", granularities_help(options))
    return _fitted_select(
        container, "Granularity", options, unfit, model_ref,
        key=key, fallback=fallback, format_func=granularity_label,
        unoffered="is not offered here", **kwargs,
    )  # fmt: skip


def criterion_select(
    container: Any,
    model_ref: str,
    granularity: str,
    *,
    key: str,
    fallback: str | None = None,
    **kwargs: Any,
) -> str:
    """A criterion select box in `container` under `key` offering the criteria that score
    `granularity` (`ui.choices.criterion_choices`) less those the model refuses
    (`ui.choices.unfit_criteria`: bn-scale without BatchNorm). A kept value that no longer fits
    (picked for another model or granularity) becomes `fallback` when offered, else the first
    offered; a model change that caused it says so under the box, as `granularity_select`.

    Returns:
        The criterion picked.
    """
    unfit = dense_unfit_criteria(model_ref, granularity)
    options = [c for c in criterion_choices(granularity) if c not in unfit]
    return _fitted_select(
        container, "Criterion", options or criterion_choices(granularity), unfit, model_ref,
        key=key, fallback=fallback, format_func=criterion_label,
        unoffered=f"does not score {granularity_label(granularity)}", **kwargs,
    )  # fmt: skip


def criteria_multiselect(
    container: Any,
    model_ref: str,
    granularity: str,
    *,
    key: str,
    **kwargs: Any,
) -> list[str]:
    """A "Methods" multiselect in `container` under `key` offering the criteria that score
    `granularity` and the model (as `criterion_select`). Kept criteria that no longer fit
    (picked for another granularity or model) are dropped before the box is drawn (the first
    offered when none is left), with one line under the box naming them while the selection,
    model and granularity stay.

    Returns:
        The criteria picked (registry names).
    """
    unfit = dense_unfit_criteria(model_ref, granularity)
    options = [c for c in criterion_choices(granularity) if c not in unfit]
    ss = st.session_state
    notes: dict[str, tuple[tuple[str, str, tuple[str, ...]], str, str | None]] = ss.setdefault(
        _LEFT_OUT, {}
    )
    kept = [str(m) for m in ss.get(key) or []]
    dropped = [m for m in kept if m not in options]
    if options and dropped:
        # Set before the box is drawn, and only on this change (see `ui.state.KEEP`).
        ss[key] = [m for m in kept if m in options] or options[:1]
        said = "; ".join(
            f"{criterion_label(m)} (does not apply to {model_ref})"
            if m in unfit
            else f"{criterion_label(m)} (does not score {granularity_label(granularity)})"
            for m in dropped
        )
        notes[key] = (
            (model_ref, granularity, tuple(ss[key])),
            f"Left out: {said}.",
            "; ".join(unfit[m] for m in dropped if m in unfit) or None,
        )
    picked = [
        str(m)
        for m in container.multiselect(
            "Methods", options, key=key, format_func=criterion_label, **kwargs
        )
    ]
    note = notes.get(key)
    if note is not None and note[0] == (model_ref, granularity, tuple(picked)):
        container.caption(note[1], help=note[2])
    else:
        notes.pop(key, None)
    return picked


def _fitted_select(
    container: Any,
    label: str,
    options: Sequence[str],
    unfit: dict[str, str],
    model_ref: str,
    *,
    key: str,
    fallback: str | None,
    format_func: Any,
    unoffered: str | None = None,
    **kwargs: Any,
) -> str:
    """A select box of `options` under `key`: a kept value not among them becomes `fallback`
    (when offered) or the first option, set before the box is drawn. One line under the box
    says so, while that choice and the model stay, when the model refuses the kept value
    (`unfit`: value -> why) or, given `unoffered` (why in words), when the panel does not offer
    it."""
    ss = st.session_state
    notes: dict[str, tuple[str, str, str, str | None]] = ss.setdefault(_FALLBACKS, {})
    kept = ss.get(key)
    if options and kept not in options:
        instead = fallback if fallback is not None and fallback in options else options[0]
        # Set before the box is drawn, and only on this change (see `ui.state.KEEP`).
        ss[key] = instead
        try:
            was = format_func(str(kept))
        except UserError:  # a choice no longer registered
            was = str(kept)
        if kept in unfit:
            # The refusal is a long line: under the note's "?", so the column stays short.
            text = f"{was} does not apply to {model_ref}: {format_func(instead)} instead."
            notes[key] = (model_ref, instead, text, unfit[str(kept)])
        elif unoffered is not None:
            text = f"{was} {unoffered}: {format_func(instead)} instead."
            notes[key] = (model_ref, instead, text, None)
    picked = str(container.selectbox(label, options, key=key, format_func=format_func, **kwargs))
    note = notes.get(key)
    if note is not None and note[:2] == (model_ref, picked):
        container.caption(note[2], help=note[3])
    else:
        notes.pop(key, None)
    return picked
