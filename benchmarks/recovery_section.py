"""Benchmark section `recovery`: 95% unstructured magnitude pruning plus three fine-tune epochs,
with the default settings and with what the literature does, on every sample model and on a
LeNet-5 trained well on MNIST (issue 11, point 6).

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python -c "from benchmarks import run, \
recovery_section as m; run.SECTIONS['recovery'] = m.section_recovery; \
run.main(['--only', 'recovery', '--no-merge', '--out', '/tmp/bench'])"

Every fine-tune is the app's job (`workflow.run_recipe`) on a fresh copy of the dense model,
built from flat settings as the command line builds them (`Recipe.from_settings`): the
`default` row is `pruning-lab prune --method magnitude --granularity unstructured --ratio 0.95
--finetune-epochs 3` and nothing else; each other row changes one or two settings. The default
(`train.DEFAULT_FINETUNE`: Adam 5e-3 with warm-up, at least 250 steps per epoch) was chosen on
proxies that report nothing here (see the comment above it); `batch` is the batch each
fine-tune trained with (`TrainResult.batch_size`). shapes-resnet, ~340 s a fine-tune, runs the
default and five variants only (`VARIANTS_BY_MODEL`, why above it); every other model runs all.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.run import MNIST_REF, Ctx, Section, Target, _held_out

__all__ = [
    "RECOVERY_MODELS",
    "RECOVERY_VARIANTS",
    "VARIANTS_BY_MODEL",
    "section_recovery",
    "train_lenet5",
]

RATIO = 0.95
EPOCHS = 3
# Points of [0, 1] the fine-tuned model may end below dense (the 0.5 points).
WITHIN = 0.005
# Held-out accuracy the LeNet-5 baseline must reach for the MNIST row to count (the issue's
# "trained well"): the accuracy section's LeNet-300-100 reaches 0.9635, where recovery is easier.
LENET_MIN_ACCURACY = 0.975
LENET_EPOCHS = 12

# model -> dataset. `lenet5` is trained here (seeded) on 8000 of the MNIST test images.
RECOVERY_MODELS: dict[str, str] = {
    "digits-mlp": "digits",
    "digits-cnn": "digits",
    "lenet5": MNIST_REF,
    "shapes-vit": "shapes",
    "shapes-resnet": "shapes",
}
DEFAULT = "default"
# name -> (what it is, with its source; the settings it changes on top of the default's). The
# settings are the command line's (`Recipe.from_settings`); `bn_recal` is not one: it
# re-estimates BatchNorm statistics on the calibration images after pruning, before the
# fine-tune (models with BatchNorm only).
RECOVERY_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "distill": ("distillation from the dense model, weight 0.5, T 4 (Hinton et al. 2015)",
                {"distill": True}),
    "adam-5e-4": ("a lower fine-tune rate, Adam 5e-4 (fine-tuning below the training rate, "
                  "Han et al. 2015)", {"lr": 5e-4}),
    "sgd-1e-2": ("SGD 1e-2, momentum 0.9, cosine: the training rate again (learning-rate "
                 "rewinding, Renda et al. 2020)", {"optimizer": "sgd", "lr": 1e-2}),
    "agp-3": ("gradual: 3 prune -> 1-epoch fine-tune cycles on the cubic AGP ramp to 95% "
              "(Zhu & Gupta 2017), the same 3 epochs in all",
              {"schedule": "agp", "steps": 3, "finetune_epochs": 1}),
    "agp-3+distill": ("the gradual schedule with distillation",
                      {"schedule": "agp", "steps": 3, "finetune_epochs": 1, "distill": True}),
    "agp-in-training": ("gradual inside the one 3-epoch fine-tune: 10 pruning steps on the cubic "
                        "AGP ramp over the first 2/3 of the optimizer steps, then the rest at 95% "
                        "(Zhu & Gupta 2017, as published); one cosine decay; last epoch",
                        {"in_training": True}),
    "dynamic": ("dynamic masks, 10 updates over the 3 epochs, pruned weights keep learning "
                "(Guo et al. 2016; Lin et al. 2020)", {"schedule": "dynamic"}),
    "bn-recal": ("BatchNorm statistics re-estimated on 256 calibration images after pruning, "
                 "before the fine-tune (Li et al. 2020)", {"bn_recal": True}),
    # Where the 95% goes (issue 11 point 6, layer collapse?): the pruned accuracy is chance on
    # both shapes models whichever way the layers share it, so these are measured by the
    # fine-tune they leave; the default's global threshold already leaves the small layers
    # denser (shapes-resnet conv1 55%, shapes-vit patch_embed.0 87%, largest 98%).
    "lamp": ("LAMP scores under the one global threshold (Lee et al. 2021; `--method lamp`)",
             {"method": "lamp"}),
    # The 95% (and the sparsity column) is then of the other layers: of the whole model less
    # its classifier that is 94.5-94.8% on four models but 47.5% on digits-mlp, whose first
    # layer holds half of its weights.
    "first-dense": ("the first weight layer kept dense as well as the classifier (Zhu & Gupta "
                    "2017; Gale et al. 2019; `--ignore FIRST,CLASSIFIER`), 95% of the other layers "
                    "(digits-mlp: 47.5% of all but the classifier)", {"first_dense": True}),
    "lamp+first-dense": ("LAMP with the first weight layer kept dense too",
                         {"method": "lamp", "first_dense": True}),
    "erk": ("per-layer ratios from the Erdos-Renyi-kernel rule, density proportional to "
            "(fan-in + fan-out + kernel) / weights, scaled to 95% overall, capped at 98% "
            "(Evci et al. 2020; `--scope layer --ratios-file`)", {"erk": True}),
}  # fmt: skip

# Variants run on each model besides `default`; a model not named runs every variant.
# shapes-resnet (resnet20 on 20,000 shapes images) costs ~340 s per variant on a quiet 2-core CPU
# (338 s for the default in the committed one-run table), ~3.5x shapes-vit (97 s) and 12-18x the
# others (19-27 s), so all 12 would take ~70 min alone: it runs the five that tell most about it. Its failure is a
# collapse to chance after pruning (0.10) that the default fine-tune brings back only to 5.3
# points below dense, so: where the 95% goes (lamp+first-dense, first-dense: the stem conv holds
# few weights that everything passes through), the dense model as a teacher (distill), its
# BatchNorm statistics, stale after pruning (bn-recal), and the gradual ramp that never drops to
# chance (agp-in-training). The others are measured on every other model.
VARIANTS_BY_MODEL: dict[str, tuple[str, ...]] = {
    "shapes-resnet": ("lamp+first-dense", "first-dense", "distill", "bn-recal", "agp-in-training"),
}


def train_lenet5(data: Any, seed: int, epochs: int = LENET_EPOCHS) -> tuple[Any, float, float]:
    """A LeNet-5 trained here on the bundle's train split (seeded; nothing is stored).

    Returns:
        (LoadedModel, validation accuracy, seconds).
    """
    from pruning_core.evaluate import evaluate
    from pruning_core.models import LoadedModel, create_model, model_spec
    from pruning_core.train import TrainConfig, fit

    spec = model_spec("lenet5")
    torch.manual_seed(seed)
    net = create_model("lenet5")
    t0 = time.perf_counter()
    fit(
        net, data, spec, TrainConfig(epochs=epochs, lr=2e-3, batch_size=64, device="cpu", seed=seed)
    )
    acc = evaluate(net, data, spec, device=torch.device("cpu")).accuracy
    for p in net.parameters():
        p.requires_grad_(False)
    return LoadedModel(net.eval(), spec, "lenet5", "lenet5"), acc, time.perf_counter() - t0


# Settings of the variants that are not the command line's, spelled out in `_run`.
_OWN = ("bn_recal", "in_training")
# The in-training gradual schedule: pruning steps, and the share of the optimizer steps over
# which the ramp reaches the target (Zhu & Gupta prune over the first part of training and
# fine-tune at the final sparsity for the rest).
IN_TRAINING_STEPS = 10
IN_TRAINING_END = 2 / 3


# Settings that depend on the model's layers, turned into command-line settings by `_per_model`.
_PER_MODEL = ("first_dense", "erk")


def erk_ratios(model: Any, ratio: float, skip: list[str], cap: float = 0.98) -> dict[str, float]:
    """Per-layer pruning ratios of the Erdos-Renyi-kernel rule (Evci et al. 2020, "Rigging the
    Lottery", appendix): layer l keeps a share eps * (sum of its weight's dims) / (its weight
    count), eps chosen so that `1 - ratio` of the weights of the layers not in `skip` stay; a
    layer the rule would keep more than whole is kept dense and eps solved again.

    Args:
        model: The dense model (its Conv2d/Linear weights).
        ratio: Share of those weights removed overall, in [0, 1).
        skip: Layer names left out (kept dense, not counted).
        cap: Largest ratio of any one layer (the PruneConfig's max_layer_ratio).

    Returns:
        layer name -> ratio; capping can leave the overall share a little below `ratio`.
    """
    from pruning_core.layers import is_weight_layer, weight_of

    ws = {n: weight_of(m) for n, m in model.named_modules() if is_weight_layer(m) and n not in skip}
    total = sum(w.numel() for w in ws.values())
    dense: set[str] = set()
    while True:
        raw = {n: sum(w.shape) / w.numel() for n, w in ws.items() if n not in dense}
        budget = (1 - ratio) * total - sum(ws[n].numel() for n in dense)
        eps = budget / sum(raw[n] * ws[n].numel() for n in raw)
        over = {n for n in raw if eps * raw[n] > 1}
        if not over:
            break
        dense |= over
    return {n: 0.0 if n in dense else min(cap, 1 - eps * raw[n]) for n in ws}


def _per_model(lm: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` with the per-model settings spelled out: `first_dense` -> `ignore` (the first
    weight layer and the classifier), `erk` -> `scope` layer with `layer_ratios`."""
    from pruning_core.layers import classifier_name, is_weight_layer

    out = {k: v for k, v in extra.items() if k not in _PER_MODEL}
    cls = classifier_name(lm.model)
    keep = [cls] if cls is not None else []
    if extra.get("first_dense"):
        first = next(n for n, m in lm.model.named_modules() if is_weight_layer(m))
        out["ignore"] = [first, *keep]
    if extra.get("erk"):
        out["scope"] = "layer"
        out["layer_ratios"] = erk_ratios(lm.model, RATIO, keep)
    return out


def _settings(name: str, dataset: str, seed: int, extra: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {
        "model": name, "dataset": dataset, "method": "magnitude", "granularity": "unstructured",
        "ratio": RATIO, "finetune_epochs": EPOCHS, "device": "cpu", "seed": seed,
    }  # fmt: skip
    s.update({k: v for k, v in extra.items() if k not in _OWN})
    return s


def _in_training(net: Any, recipe: Any, data: Any, spec: Any) -> tuple[Any, Any, Any]:
    """Zhu & Gupta's (2017) gradual pruning inside one fine-tune: the masks tighten on the cubic
    ramp every few optimizer steps and are held in between.

    Returns:
        (the first pruning step's PruneResult, its measured accuracy, the TrainResult).
    """
    import dataclasses
    import math

    from pruning_core.evaluate import evaluate
    from pruning_core.prune import MaskEnforcer, prune_
    from pruning_core.schedules import schedule_ratio
    from pruning_core.train import epoch_batch_size, fit

    tc = dataclasses.replace(recipe.finetune, keep_best=False)  # earlier epochs are less sparse
    n_train = data.num_examples("train")
    total = math.ceil(n_train / epoch_batch_size(tc, n_train)) * tc.epochs
    n = IN_TRAINING_STEPS
    every = max(1, round(IN_TRAINING_END * total) // (n - 1))
    state: dict[str, Any] = {"k": 1}

    def step_to(k: int) -> Any:
        cfg = recipe.prune.replace(ratio=schedule_ratio("agp", k, n, RATIO))
        with torch.no_grad():
            res = prune_(net, cfg, data=data, spec=spec)
        state["hold"] = MaskEnforcer(net, res.masks)
        return res

    first = step_to(1)
    pruned = evaluate(net, data, spec, device=torch.device("cpu"))

    def after(model: Any, step: int) -> None:
        if state["k"] < n and step >= state["k"] * every:
            state["k"] += 1
            step_to(state["k"])
        state["hold"](model, step)

    tr = fit(net, data, spec, tc, after_step=after)
    return first, pruned, tr


def _run(lm: Any, data: Any, settings: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """One fine-tune on a fresh copy of the dense model: the app's job (`run_recipe`), or the
    same one-shot prune -> fine-tune with masks held spelled out with BatchNorm recalibration
    between (`bn_recal`), or the in-training gradual schedule (`in_training`)."""
    from pruning_core.calibration import recalibrate_batchnorm
    from pruning_core.evaluate import evaluate
    from pruning_core.layers import trainable_copy
    from pruning_core.models import LoadedModel
    from pruning_core.prune import hold_masks, measured_sparsity, prune_
    from pruning_core.recipe import Recipe
    from pruning_core.train import fit
    from pruning_core.workflow import run_recipe

    recipe = Recipe.from_settings(settings)
    student = LoadedModel(trainable_copy(lm.model), lm.spec, lm.arch, lm.source, dict(lm.meta))
    t0 = time.perf_counter()
    net = student.model
    if own.get("in_training"):
        first, pruned, tr = _in_training(net, recipe, data, lm.spec)
        sparsity = measured_sparsity(net, list(first.masks))[0]
    elif own.get("bn_recal"):
        pr = prune_(net, recipe.prune, data=data, spec=lm.spec)
        recalibrate_batchnorm(net, data, lm.spec)
        pruned = evaluate(net, data, lm.spec, device=torch.device("cpu"))
        hold = hold_masks(net, pr.masks)
        assert hold is not None
        with hold:
            tr = fit(net, data, lm.spec, recipe.finetune, after_step=hold, start=pruned)
        sparsity = pr.sparsity
    else:
        s = run_recipe(recipe, model=student, data=data).schedule
        return {
            "model": net, "sparsity": s.prune.sparsity,
            "pruned": s.pruned_accuracy, "finetuned": s.finetuned_accuracy,
            "kept_epoch": s.train[-1].best_epoch if s.train else None,
            "epochs": [h["val_accuracy"] for t in s.train for h in t.history],
            "batch": s.train[-1].batch_size if s.train else None,
            "seconds": time.perf_counter() - t0, "recipe": recipe,
        }  # fmt: skip
    return {
        # In training there is no moment at 95% before any fine-tune: no pruned accuracy.
        "model": net, "sparsity": sparsity, "pruned": None if own.get("in_training") else pruned.accuracy,
        "finetuned": tr.final_accuracy, "kept_epoch": tr.best_epoch,
        "epochs": [h["val_accuracy"] for h in tr.history], "batch": tr.batch_size,
        "seconds": time.perf_counter() - t0, "recipe": recipe,
    }  # fmt: skip


def section_recovery(ctx: Ctx) -> Section:
    """95% unstructured magnitude pruning + 3 fine-tune epochs: within 0.5 points of dense?"""
    from pruning_core.data import load_dataset
    from pruning_core.evaluate import evaluate
    from pruning_core.models import load_model

    sec = Section(
        "recovery",
        "Recovery from 95% unstructured magnitude pruning in 3 fine-tune epochs (default and "
        "literature settings)",
    )
    torch.set_num_threads(ctx.threads)
    models = dict(RECOVERY_MODELS)
    variants = dict(RECOVERY_VARIANTS)
    if ctx.quick:
        models = {"digits-cnn": "digits"}
        variants = {k: variants[k] for k in ("distill", "agp-in-training")}
    for name, ref in models.items():
        if ref == MNIST_REF and not Path(MNIST_REF.removeprefix("idx:")).exists():
            sec.notes.append(f"{MNIST_REF} not found (run from the project root): LeNet-5 skipped")
            continue
        data = load_dataset(ref)
        if name == "lenet5":
            lm, acc, secs = train_lenet5(data, ctx.seed)
            sec.notes.append(
                f"lenet5: LeNet-5 trained here, {LENET_EPOCHS} epochs (Adam 2e-3, cosine, batch "
                f"64, seed {ctx.seed}) on 8000 of the 10,000 MNIST test images ({MNIST_REF}), "
                f"validated on the other 2000: dense accuracy {acc:.4f} ({secs:.0f} s); "
                f"the issue asks for >= {LENET_MIN_ACCURACY}."
            )
            sec.targets.append(
                Target("LeNet-5 baseline on MNIST, held-out accuracy (trained well)", acc,
                       LENET_MIN_ACCURACY, ">=", "acc")
            )  # fmt: skip
        else:
            lm = load_model(name)
        fresh = _held_out(data)[1] if data.name == "shapes" else None
        dense = evaluate(lm.model, data, lm.spec, device=torch.device("cpu")).accuracy
        dense_fresh = evaluate(lm.model, fresh, lm.spec).accuracy if fresh is not None else None
        bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in lm.model.modules())
        if name in VARIANTS_BY_MODEL:
            limited = {k: v for k, v in variants.items() if k in VARIANTS_BY_MODEL[name]}
        else:
            limited = variants
        for vname, (_, extra) in {DEFAULT: ("", {}), **limited}.items():
            if extra.get("bn_recal") and not bn:
                continue
            own = {k: v for k, v in extra.items() if k in _OWN}
            out = _run(lm, data, _settings(name, ref, ctx.seed, _per_model(lm, extra)), own)
            ft_fresh = (
                evaluate(out["model"], fresh, lm.spec).accuracy if fresh is not None else None
            )
            rc = out["recipe"]
            sec.rows.append({
                "model": name, "variant": vname, "dense": dense, "sparsity": out["sparsity"],
                "pruned": out["pruned"], "finetuned": out["finetuned"],
                "gap_points": 100 * (dense - out["finetuned"]),
                "kept_epoch": out["kept_epoch"],
                "epoch_accuracies": " ".join(f"{a:.4f}" for a in out["epochs"]),
                "dense_fresh": dense_fresh, "finetuned_fresh": ft_fresh,
                "optimizer": rc.finetune.optimizer, "lr": rc.finetune.lr, "batch": out["batch"],
                "distill": rc.finetune.distill_weight,
                "schedule": "agp in training" if own.get("in_training") else rc.schedule.kind,
                "seconds": out["seconds"],
            })  # fmt: skip
            print(sec.rows[-1], flush=True)
    _targets(sec)
    return sec


def _targets(sec: Section) -> None:
    """One target per model on the default's row; notes: what each variant did."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in sec.rows:
        by_model.setdefault(r["model"], []).append(r)
    for name, rows in by_model.items():
        d = next(r for r in rows if r["variant"] == DEFAULT)
        t = Target(
            f"{name}: 95% unstructured magnitude + {EPOCHS} fine-tune epochs, default settings: "
            f"accuracy drop vs dense {d['dense']:.4f} (points of [0, 1])",
            d["dense"] - d["finetuned"], WITHIN, "<=", "acc",
        )  # fmt: skip
        best = max(rows, key=lambda r: r["finetuned"])
        if not t.passed:
            t.why = (
                f"ends at {d['finetuned']:.4f} from {d['pruned']:.4f} after pruning; the best "
                f"setting tried ({best['variant']}) ends at {best['finetuned']:.4f}"
            )
        sec.targets.append(t)
        sec.notes.append(
            f"{name}: dense {d['dense']:.4f}; after pruning {d['pruned']:.4f}; "
            + "; ".join(f"{r['variant']} {r['finetuned']:.4f}" for r in rows)
            + "."
        )
    for name, kept in VARIANTS_BY_MODEL.items():
        if name not in by_model:
            continue
        ran = [r["variant"] for r in by_model[name] if r["variant"] != DEFAULT]
        skipped = [v for v in RECOVERY_VARIANTS if v not in kept]
        secs = sorted(r["seconds"] for r in by_model[name])
        others = sorted(r["seconds"] for r in sec.rows if r["model"] != name)
        sec.notes.append(
            f"{name} runs {DEFAULT} and {', '.join(ran) or 'no variant'} only "
            f"(`VARIANTS_BY_MODEL`), not {', '.join(skipped)}: one variant costs "
            f"{secs[len(secs) // 2]:.0f} s there in this run (median of its {len(secs)}), "
            + (f"{others[len(others) // 2]:.0f} s on the other models, " if others else "")
            + "so all would add about "
            f"{len(skipped) * secs[len(secs) // 2] / 60:.0f} min; the five kept test what its "
            "collapse to chance after pruning points at: where the 95% goes (first-dense, "
            "lamp+first-dense), the dense model as teacher (distill), BatchNorm statistics "
            "(bn-recal), a ramp that never drops to chance (agp-in-training)."
        )
    from pruning_core.train import DEFAULT_FINETUNE

    ft = DEFAULT_FINETUNE
    sec.notes.append(
        f"{DEFAULT}: the command line's defaults with {EPOCHS} fine-tune epochs asked for: "
        f"`train.DEFAULT_FINETUNE` ({ft.optimizer} lr {ft.lr:g}, linear warm-up over "
        f"{ft.warmup:.0%} of the steps then {ft.schedule} decay, batch {ft.batch_size} but at "
        f"least {ft.min_steps_per_epoch} steps per epoch (digits: batch 5), distillation weight "
        f"{ft.distill_weight:g}, best epoch kept: {ft.keep_best}), one-shot schedule, global "
        "scope, magnitude, masks held. How the default was chosen (proxies that report "
        "nothing here): `pruning_core/train.py` above `DEFAULT_FINETUNE`."
    )
    sec.notes.append(
        "dense, pruned and finetuned are validation accuracies (the app's split: digits 359, "
        "shapes 2000, MNIST 2000 images, one image is 0.28 / 0.05 / 0.05 points); the best epoch "
        "is chosen on it, so for shapes the *_fresh columns add 2000 freshly generated images "
        "(seed 2) that chose nothing. pruned: right after the last pruning step, before its "
        "fine-tune (none for agp-in-training); epoch_accuracies: each epoch of the fine-tune(s)."
    )
    for vname, (what, _) in RECOVERY_VARIANTS.items():
        sec.notes.append(f"{vname}: {what}.")
