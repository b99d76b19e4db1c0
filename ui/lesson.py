"""The guided first lesson: five short steps on the `digits-cnn` sample, offline, on a laptop CPU.

1. Look at the weights: most sit near zero.
2. Prune 50% and 90%: smallest-magnitude weights against random ones.
3. Fine-tune one epoch: the pruned network recovers.
4. Time it: masked zeros run no faster; removing channels does.
5. Where to go next.

Each step measures for real (the whole validation split, the CPU timer) and takes a few seconds;
results are kept in the session, so going back and forth is instant. The Model & data page calls
`lesson_panel()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from pruning_core import plots
from pruning_core.criteria import Magnitude, Random
from pruning_core.experiments import sweep
from pruning_core.layers import trainable_copy
from pruning_core.stats import histograms_frame, weight_histograms
from pruning_core.tradeoffs import latency_vs_sparsity
from pruning_core.train import TrainConfig
from ui.loaders import shared_data, shared_model
from ui.state import init_state

MODEL, DATASET = "digits-cnn", "digits"
LESSON_RATIOS = (0.5, 0.9)
# Magnitude against its baseline: the lesson's point is that which weights go matters.
LESSON_METHODS = (Magnitude.name, Random.name)
STEPS = ("Look at the weights", "Prune: magnitude vs random", "Fine-tune one epoch",
         "Does it run faster?", "Your turn")  # fmt: skip


def _results() -> dict[int, Any]:
    res = st.session_state.get("lesson_results")
    if not isinstance(res, dict):
        res = {}
        st.session_state["lesson_results"] = res
    return res


def _measure(step: int, label: str, fn: Callable[[], Any]) -> Any:
    """Run `fn` once when the user asks (button), keep the result for the session."""
    res = _results()
    if step not in res and st.button(label, key=f"lesson_run_{step}", type="primary"):
        with st.spinner("Measuring on this machine..."):
            res[step] = fn()
    return res.get(step)


def _sweep(epochs: int) -> pd.DataFrame:
    loaded, data = shared_model(MODEL), shared_data(DATASET)
    # sweep copies the model itself and never modifies it; fine-tuning needs trainable copies.
    net = trainable_copy(loaded.model)
    tc = TrainConfig(epochs=max(epochs, 1), lr=1e-3, optimizer="adam", device="cpu")
    return sweep(net, data, loaded.spec, methods=list(LESSON_METHODS), ratios=list(LESSON_RATIOS),
                 finetune_epochs=epochs, train_config=tc, device="cpu")  # fmt: skip


def _step_weights() -> None:
    st.markdown(
        "A trained network is a pile of numbers. Below: every weight of two layers of a small "
        "digit classifier, binned. Most are **close to zero**: removing them should change the "
        "output little. That is the bet of **magnitude pruning**."
    )
    hists = histograms_frame(weight_histograms(shared_model(MODEL).model, ["conv2", "fc1"]))
    c1, c2 = st.columns(2)
    for col, layer in ((c1, "conv2"), (c2, "fc1")):
        df = hists[hists["layer"] == layer].assign(series=layer)
        col.plotly_chart(
            plots.histogram_figure(df, f"{layer}: weight values", height=280),
            key=f"lesson_hist_{layer}",
        )


def _step_prune() -> None:
    st.markdown(
        "Now remove 50% and then 90% of the weights, two ways: the **smallest in magnitude** and "
        "**at random**. Each point is measured on all validation images."
    )
    df = _measure(1, "Prune and measure", lambda: _sweep(0))
    if df is not None:
        st.plotly_chart(
            plots.accuracy_sparsity_figure(df, subtitle="digits validation split, 359 images"),
            key="lesson_prune_chart",
        )
        mag = df[(df["method"] == Magnitude.name) & (df["ratio"] == 0.9)]["accuracy"].iloc[0]
        rnd = df[(df["method"] == Random.name) & (df["ratio"] == 0.9)]["accuracy"].iloc[0]
        st.success(
            f"At 90% sparsity: magnitude keeps **{mag:.1%}** accuracy, random **{rnd:.1%}**. "
            "Which weights you remove matters more than how many."
        )


def _step_finetune() -> None:
    st.markdown(
        "Pruning is usually followed by **fine-tuning**: train a little more while the removed "
        "weights stay at zero, so the others take over their work (prune, then retrain). One "
        "epoch here is about 23 small batches."
    )
    df = _measure(2, "Fine-tune one epoch and measure", lambda: _sweep(1))
    if df is not None:
        st.plotly_chart(
            plots.accuracy_sparsity_figure(df, subtitle="dashed: after one epoch of fine-tuning"),
            key="lesson_ft_chart",
        )
        row = df[(df["method"] == Random.name) & (df["ratio"] == 0.9)].iloc[0]
        st.success(
            f"Random pruning at 90%: **{row['accuracy']:.1%}** before fine-tuning, "
            f"**{row['finetuned_accuracy']:.1%}** after one epoch."
        )


def _step_latency() -> None:
    st.markdown(
        "Fewer weights, faster model? Not by itself. A **masked** model keeps its zeros in dense "
        "tensors and the same dense kernels multiply them like any number. Only removing whole "
        "channels (**structured** pruning: a smaller model) or sparse kernels do less work."
    )

    def run() -> pd.DataFrame:
        loaded = shared_model(MODEL)
        return latency_vs_sparsity(loaded.model, loaded.spec, [0.5, 0.9],
                                   backends=("dense", "masked", "structured"))  # fmt: skip

    df = _measure(3, "Time dense, masked and shrunk", run)
    if df is not None:
        st.plotly_chart(
            plots.latency_sparsity_figure(df, subtitle=df.attrs.get("protocol", "")),
            key="lesson_lat_chart",
        )
        ok = df[(df["status"] == "ok") & (df["ratio"] == 0.9)].set_index("backend")
        st.success(
            f"At 90%, against dense: masked **{ok.loc['masked', 'vs_dense']}**, the shrunk "
            f"model **{ok.loc['structured', 'vs_dense']}** (its accuracy cost is larger: try it "
            "on the Prune page with granularity `channel`)."
        )


def _step_next() -> None:
    st.markdown(
        "You have seen the whole loop: **inspect → prune → fine-tune → measure**. Next:\n"
        "- **Inspect**: histograms per layer, and activations (APoZ: how often a channel is "
        "zero).\n"
        "- **Prune**: move the sliders and watch the preview; try `wanda` or `taylor` (they "
        "look at data), `2:4` (GPU-friendly) or `channel`.\n"
        "- **Fine-tune**: schedules (iterative pruning, AGP, dynamic), distillation, "
        "regularisation.\n"
        "- **Trade-offs** and **Export & report**: curves for several methods, and a report to "
        "share."
    )


_RENDER = (_step_weights, _step_prune, _step_finetune, _step_latency, _step_next)


def _move(delta: int) -> None:
    step = int(st.session_state.get("lesson_step") or 0) + delta
    st.session_state["lesson_step"] = max(0, min(step, len(STEPS) - 1))
    st.session_state["lesson_started"] = True


# Whether the lesson's expander is open (a stateful expander: its content is drawn only then).
LESSON_OPEN = "lesson_open"


def lesson_panel() -> None:
    """The guided lesson, in an expander (open once started)."""
    init_state()
    step = int(st.session_state.get("lesson_step") or 0)
    started = bool(st.session_state.get("lesson_started"))
    box = st.expander("Guided lesson: pruning in five steps (a few minutes, offline)",
                      icon=":material/school:", expanded=started,
                      key=LESSON_OPEN, on_change="rerun")  # fmt: skip
    if box.open is False:
        # Drawn only when open: every run of Model & data (each student's page load and model
        # pick) otherwise binned two layers' weights and built the step's figures unseen.
        return
    with box:
        st.caption(
            f"On the `{MODEL}` sample (a small CNN for 8x8 handwritten digits), whatever model is "
            "picked above. Everything is measured on this computer."
        )
        st.progress((step + 1) / len(STEPS), text=f"Step {step + 1} of {len(STEPS)}: {STEPS[step]}")
        _RENDER[step]()
        c1, c2, _ = st.columns([1, 1, 4])
        c1.button("← Back", key="lesson_back", disabled=step == 0, on_click=_move, args=(-1,))
        c2.button(
            "Next →", key="lesson_next", disabled=step == len(STEPS) - 1, on_click=_move, args=(1,)
        )
