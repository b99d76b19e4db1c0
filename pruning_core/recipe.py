"""The recipe format: the settings that repeat a `pruning-lab prune` run exactly.

Shared by the CLI (which writes `recipe.json` and reads `--recipe`) and `export` (which builds
recipes for runs made in the app), so both agree on one format.

A recipe is a versioned document, never an instruction to read arbitrary files:

- its `version` must be one this Pruning Lab reads (`RECIPE_VERSION` or older); a newer one is
  refused, and so is any setting or top-level key it does not know, naming them;
- every setting is checked with the same ranges as the command-line option of the same name
  (`SETTING_CHECKS`), before any model is loaded;
- the settings that name files (`model`, `dataset`, `ratios_file`) are registry names, or paths
  resolved relative to the recipe's own folder that may not leave it (no absolute paths, no
  `..`, no symbolic links pointing out). A recipe exported by the app carries values (ratios
  inline, registry names, file names), never a path of the machine that wrote it;
- a recipe written before the one default fine-tune (`train.DEFAULT_FINETUNE`) records no
  `keep_best`: it is read as written then (last epoch kept, the fine-tune settings it left out
  as its `train` section records them), so it repeats its run;
- a recipe written before the `warmup` and `min_steps_per_epoch` settings leaves them out: each
  is what its `train` section records the run used, else 0 (no warm-up, no minimum of steps
  per epoch: the fine-tune before the default gained them), never today's default.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pruning_core.checkpoint import CHECKPOINT_SUFFIXES
from pruning_core.errors import UserError, brief, shown
from pruning_core.fsio import json_default
from pruning_core.plans import get_plan
from pruning_core.prune import PruneConfig
from pruning_core.schedules import DYNAMIC_DEFAULT_UPDATES, Schedule
from pruning_core.train import DEFAULT_FINETUNE, STRUCTURED_FINETUNE, TrainConfig
from pruning_core.validate import RATIO, SEED, Range

__all__ = [
    "DISTILL_WEIGHT",
    "RECIPE_KEYS",
    "RECIPE_SECTIONS",
    "RECIPE_VERSION",
    "SETTING_CHECKS",
    "Recipe",
    "check_settings",
    "portable_ref",
    "read_mapping",
    "read_recipe",
]

RECIPE_VERSION = 1

# Run-defining settings: a recipe fills them, options given on the command line win.
RECIPE_KEYS = (
    "model", "arch", "dataset", "method", "granularity", "ratio", "scope", "ratios_file", "schedule",
    "steps", "finetune_epochs", "lr", "optimizer", "batch_size", "weight_decay", "warmup",
    "min_steps_per_epoch", "distill", "keep_best", "regularize", "reg_strength", "device", "seed", "norm", "ignore",
    "max_layer_ratio", "structured_mode", "round_to", "calib_batches",
)  # fmt: skip
# Top-level keys of a recipe document. Only `settings` drives the run; the others describe it.
RECIPE_SECTIONS = ("version", "settings", "prune", "schedule", "train", "regularize", "seed")
# Settings that name a file or folder (dataset references may carry an `idx:`/`folder:` prefix).
_PATH_SETTINGS = ("model", "dataset", "ratios_file")
_DATASET_PREFIXES = ("idx:", "folder:")

# One range per numeric setting; the command line uses the same objects as argparse types.
SETTING_CHECKS: dict[str, Range] = {
    "ratio": RATIO,
    "steps": Range(integer=True, lo=1, hi=10_000, label="steps"),
    "finetune_epochs": Range(integer=True, lo=0, hi=100_000, label="epochs"),
    "lr": Range(lo=0, hi=100, lo_open=True, label="learning rate"),
    "batch_size": Range(integer=True, lo=1, hi=1_000_000, label="batch size"),
    "weight_decay": Range(lo=0, hi=100, label="weight decay"),
    # `TrainConfig.warmup`: the share of the fine-tune's steps the rate rises over.
    "warmup": Range(lo=0, hi=1, hi_open=True, label="warm-up share"),
    "min_steps_per_epoch": Range(integer=True, lo=0, hi=1_000_000, label="minimum steps per epoch"),
    "reg_strength": Range(lo=0, label="regulariser strength"),
    "seed": SEED,
    "norm": Range(integer=True, lo=1, hi=2, label="norm"),
    "max_layer_ratio": Range(lo=0, hi=1, lo_open=True, hi_open=True, label="max_layer_ratio"),
    "round_to": Range(integer=True, lo=1, hi=4096, label="round_to"),
    "calib_batches": Range(integer=True, lo=1, hi=10_000, label="calibration batches"),
}
_TEXT_SETTINGS = (
    "model", "arch", "dataset", "method", "granularity", "scope", "ratios_file", "schedule",
    "optimizer", "regularize", "device", "structured_mode",
)  # fmt: skip


# Recipes and ratios files are small documents; anything larger is not one.
MAX_DOCUMENT_BYTES = 1 << 20


def _load_yaml(text: str) -> Any:
    """YAML's safe subset, without aliases: `*name` references let a few lines expand into
    gigabytes ("billion laughs"), and a recipe never needs them."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise yaml.YAMLError("aliases (*name) are not allowed")
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=NoAliasLoader)


def read_mapping(path: Path, what: str) -> dict[str, Any]:
    """A JSON or YAML file holding one mapping (YAML by the `.yaml`/`.yml` suffix).

    Raises:
        UserError: Missing, unreadable, malformed, or not a mapping; named in one line.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        if path.stat().st_size > MAX_DOCUMENT_BYTES:
            raise UserError(
                f"{what} {path.name} is over {MAX_DOCUMENT_BYTES // 1024} KiB; a recipe or ratios "
                "file is a few lines"
            )
        text = path.read_text(errors="replace")
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        yaml_file = path.suffix.lower() in (".yaml", ".yml")
        doc = _load_yaml(text) if yaml_file else json.loads(text)
    except Exception as e:  # json and yaml raise different types; both mean a malformed file
        first = shown(str(e).splitlines()[0]) if str(e) else type(e).__name__
        raise UserError(f"cannot parse {what} {path.name}: {first}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{what} {path.name} must hold a mapping")
    return doc


def check_settings(settings: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Check a recipe's settings: known names, and each value of the right type and range.

    Args:
        settings: The `settings` mapping of a recipe.
        source: How to name the recipe in messages (its file name).

    Returns:
        The settings with numbers normalised (`"3"` -> 3 is refused: values must be numbers).

    Raises:
        UserError: An unknown setting, or a value of the wrong type or out of range, named.
    """
    unknown = sorted(set(settings) - {*RECIPE_KEYS, "layer_ratios"})
    if unknown:
        raise UserError(
            f"recipe {source}: unknown setting(s) {', '.join(repr(shown(k, 40)) for k in unknown[:5])}; "
            "it may come from a newer Pruning Lab"
        )
    out: dict[str, Any] = {}
    for key, value in settings.items():
        what = f"recipe {source}: setting '{key}'"
        if value is None:
            out[key] = None
        elif key in SETTING_CHECKS:
            if isinstance(value, str | bool):
                raise UserError(f"{what} must be a number, got {brief(value)}")
            out[key] = SETTING_CHECKS[key].check(value, what)
        elif key in _TEXT_SETTINGS:
            if not isinstance(value, str) or not value.strip() or "\0" in value:
                raise UserError(f"{what} must be a non-empty text, got {brief(value)}")
            out[key] = value
        elif key in ("distill", "keep_best"):
            if not isinstance(value, bool):
                raise UserError(f"{what} must be true or false, got {brief(value)}")
            out[key] = value
        elif key == "ignore":
            ok = isinstance(value, str) or (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            )
            if not ok:
                raise UserError(f"{what} must be a list of layer names, got {brief(value)}")
            out[key] = value
        elif key == "layer_ratios":
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise UserError(f"{what} must map layer names to ratios, got {brief(value)}")
            ratios = {}
            for layer, r in value.items():
                if isinstance(r, str | bool):
                    raise UserError(f"{what}['{layer}'] must be a number, got {brief(r)}")
                ratios[layer] = RATIO.check(r, f"{what}['{layer}']")
            out[key] = ratios
    return out


def read_recipe(path: Path, replaced: Collection[str] = ()) -> dict[str, Any]:
    """Read a recipe (`recipe.json`, YAML, or a run's `metrics.json`) into checked settings.

    Args:
        path: The recipe file.
        replaced: Settings the caller replaces (options given on the command line): their
            values are still type-checked, but the files they name are not resolved.

    Returns:
        Its settings, checked (`check_settings`), with file-naming settings resolved to paths
        inside the recipe's folder.

    Raises:
        UserError: Unreadable or malformed; not a recipe; a version newer than
            `RECIPE_VERSION`; unknown keys or settings; values out of range; a file setting that
            reaches outside the recipe's folder.
    """
    path = Path(path)
    settings = _check_document(read_mapping(path, "recipe"), path.name)
    base = path.resolve().parent
    for key in _PATH_SETTINGS:
        value = settings.get(key)
        if isinstance(value, str) and key not in replaced:
            settings[key] = _resolve_ref(key, value, base, path.name)
    return settings


def _is_registry_ref(key: str, value: str) -> bool:
    path_like = (
        "/" in value
        or "\\" in value
        or value.startswith(("~", ".", *_DATASET_PREFIXES))
        or value.endswith((*CHECKPOINT_SUFFIXES, ".zip"))
    )
    if key == "ratios_file" or path_like:
        return False
    if key == "model":
        from pruning_core.models import get_entry

        try:
            get_entry(value)
        except UserError:
            return False
        return True
    from pruning_core.data import list_datasets

    return value in {e.name for e in list_datasets()}


def _resolve_ref(key: str, value: str, base: Path, source: str) -> str:
    """A recipe's file reference as a path inside `base` (registry names pass unchanged)."""
    if _is_registry_ref(key, value):
        return value
    prefix = next((p for p in _DATASET_PREFIXES if key == "dataset" and value.startswith(p)), "")
    raw = value[len(prefix) :]
    rel = Path(raw).expanduser() if raw.startswith("~") else Path(raw)
    outside = UserError(
        f"recipe {source}: setting '{key}' names {value!r}, outside the recipe's folder; a recipe "
        f"may only name files beside it (give --{key.replace('_', '-')} on the command line instead)"
    )
    if rel.is_absolute() or ".." in rel.parts:
        raise outside
    full = base / rel
    if not os.path.realpath(full).startswith(str(base) + os.sep):
        raise outside  # a symbolic link inside the folder that points out of it
    return prefix + str(full)


def portable_ref(ref: str, kind: str) -> str:
    """A model or dataset reference as a recipe may carry it: a registry name unchanged, a path
    reduced to its file name (resolved beside the recipe when it is read again).

    Args:
        ref: What the run used.
        kind: `model` or `dataset`.
    """
    if _is_registry_ref(kind, ref):
        return ref
    prefix = next((p for p in _DATASET_PREFIXES if kind == "dataset" and ref.startswith(p)), "")
    return prefix + Path(ref[len(prefix) :].rstrip("/\\")).name


# ---------------------------------------------------------------------------------------------
# the Recipe object

# Distillation weight a recipe's `distill: true` means (the dense model's soft targets share).
DISTILL_WEIGHT = 0.5


def _given(s: Mapping[str, Any], key: str, default: Any) -> Any:
    """A setting, or `default` only when it is absent (0 is a value, never replaced)."""
    v = s.get(key)
    return default if v is None else v


@dataclass(frozen=True)
class Recipe:
    """Everything that repeats a pruning run: what, how, and with which seed.

    One frozen, versioned object for the command line (`prune --recipe`), the app's fine-tune
    job and the Export page; `to_document()` is the `recipe.json` format and `from_document`
    reads it back (the version and every setting checked; see the module docstring).

    Attributes:
        model: Model reference (registry name, model folder or checkpoint file).
        dataset: Dataset reference.
        prune: The pruning target (criterion, granularity, ratios...).
        schedule: How pruning is spread over time (one-shot, linear, AGP, dynamic).
        finetune: Fine-tuning after each pruning step (0 epochs: none), distillation included
            (`distill_weight`).
        regularizer: A sparsity regulariser trained with before pruning (`l1`, `slim`,
            `group-lasso`), or None.
        reg_strength: Its multiplier (None: the regulariser's default).
        arch: Architecture of a checkpoint-file model (a registry name), else None.
        seed: Seeds pruning, fine-tuning and everything random: same seed, same result.
        version: The format version (`RECIPE_VERSION`).
    """

    model: str
    dataset: str
    prune: PruneConfig
    schedule: Schedule = field(default_factory=Schedule)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=0))
    regularizer: str | None = None
    reg_strength: float | None = None
    arch: str | None = None
    seed: int = 0
    version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        for key in ("model", "dataset"):
            v = getattr(self, key)
            if not isinstance(v, str) or not v.strip():
                raise UserError(f"a recipe needs a {key} reference, got {v!r}")
        if not 1 <= self.version <= RECIPE_VERSION:
            raise UserError(f"recipe version {self.version} is not one this Pruning Lab reads")
        if self.regularizer is not None:
            self.make_regularizer()  # unknown names and bad strengths fail here
            if self.finetune.epochs < 1:
                raise UserError(
                    "--regularize trains with the penalty before pruning: give "
                    "--finetune-epochs >= 1"
                )

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def from_settings(cls, s: Mapping[str, Any]) -> Recipe:
        """A recipe from flat settings (the `settings` of a recipe file, or command-line options).

        Absent settings take their defaults: the fine-tune is `train.DEFAULT_FINETUNE` (the
        app's and every command's) with the settings given on top; no fine-tune epochs unless
        asked (`finetune_epochs`).

        Raises:
            UserError: A missing model, criterion or granularity, a missing dataset where the
                model names none (`pairing.home_dataset`), or any invalid value.
        """
        s = dict(s)
        if not s.get("method") and s.get("granularity"):
            # A granularity that takes one criterion (low rank: singular values are magnitudes)
            # needs no --method.
            from pruning_core.prune import criteria_for

            fit = criteria_for(str(s["granularity"]))
            if len(fit) == 1:
                s["method"] = fit[0]
        if s.get("model") and not s.get("dataset"):
            # The dataset the model was trained for (its registry entry or folder names it).
            from pruning_core.pairing import home_dataset, no_home_reason

            s["dataset"] = home_dataset(str(s["model"]))
            if not s["dataset"]:
                why = no_home_reason(str(s["model"]))  # a broken model says so itself
                raise UserError(f"--dataset is required (or --recipe FILE): {why}")
        for k, flag in (("model", "model"), ("dataset", "dataset"), ("method", "criterion"),
                        ("granularity", "granularity")):  # fmt: skip
            if not s.get(k):
                raise UserError(f"--{flag} is required (or --recipe FILE)")
        layer_ratios: dict[str, Any] = dict(s.get("layer_ratios") or {})
        if s.get("ratios_file"):
            # A recipe carries the ratios file's content, not its path; a file given now wins.
            layer_ratios = read_mapping(Path(s["ratios_file"]), "ratios file")
        plan, granularity = get_plan(str(s["granularity"]))
        ratio = s.get("ratio")
        if ratio is None:
            if not plan.fixed_ratio:
                raise UserError("--ratio is required (share removed, in [0, 1))")
            ratio = 0.0
        ignore = s.get("ignore")
        if isinstance(ignore, str):
            ignore = [x.strip() for x in ignore.split(",") if x.strip()]
        seed = int(_given(s, "seed", 0))
        kw: dict[str, Any] = {
            "criterion": s["method"],
            "granularity": granularity,
            "ratio": ratio,
            "scope": s.get("scope") or "global",
            "layer_ratios": tuple(layer_ratios.items()),
            "ignore": None if ignore is None else tuple(ignore),
            "norm": _given(s, "norm", 1),
            "seed": seed,
        }
        for k in ("max_layer_ratio", "structured_mode", "round_to", "calib_batches"):
            if s.get(k) is not None:
                kw[k] = s[k]
        prune = PruneConfig(**kw)
        told = any(s.get(k) is not None for k in ("optimizer", "lr", "distill"))
        d = STRUCTURED_FINETUNE if prune.structured and not told else DEFAULT_FINETUNE
        distill = s.get("distill")
        finetune = dataclasses.replace(
            d,
            epochs=int(_given(s, "finetune_epochs", 0)),
            lr=float(_given(s, "lr", d.lr)),
            optimizer=str(s.get("optimizer") or d.optimizer),
            batch_size=int(_given(s, "batch_size", d.batch_size)),
            weight_decay=float(_given(s, "weight_decay", d.weight_decay)),
            warmup=float(_given(s, "warmup", d.warmup)),
            min_steps_per_epoch=int(_given(s, "min_steps_per_epoch", d.min_steps_per_epoch)),
            device=str(s.get("device") or d.device),
            seed=seed,
            distill_weight=d.distill_weight
            if distill is None
            else (DISTILL_WEIGHT if distill else 0.0),
            keep_best=bool(_given(s, "keep_best", d.keep_best)),
        )
        kind = str(s.get("schedule") or "oneshot")
        steps = s.get("steps")
        schedule = Schedule(
            kind,
            int(steps)
            if steps is not None
            else (DYNAMIC_DEFAULT_UPDATES if kind == "dynamic" else 1),
        )
        return cls(
            model=str(s["model"]),
            dataset=str(s["dataset"]),
            prune=prune,
            schedule=schedule,
            finetune=finetune,
            regularizer=s.get("regularize") or None,
            reg_strength=s.get("reg_strength"),
            arch=s.get("arch") or None,
            seed=seed,
        )

    @classmethod
    def from_document(cls, doc: Mapping[str, Any], source: str = "recipe") -> Recipe:
        """A recipe from its document (`to_document()`'s layout), checked like a file.

        Raises:
            UserError: As `read_recipe` (version, unknown keys, values), without file resolution.
        """
        return cls.from_settings(_check_document(doc, source))

    @classmethod
    def read(cls, path: Path, replaced: Mapping[str, Any] | None = None) -> Recipe:
        """Read a recipe file, with `replaced` settings (command-line options) on top.

        Raises:
            UserError: As `read_recipe` and `from_settings`.
        """
        given = dict(replaced or {})
        settings = read_recipe(path, given)
        settings.update(given)
        return cls.from_settings(settings)

    # -- using ---------------------------------------------------------------------------------

    def make_regularizer(self) -> Any:
        """The regulariser object (`pruning_core.regularize`), or None."""
        if self.regularizer is None:
            return None
        from pruning_core.regularize import make_regularizer

        return make_regularizer(self.regularizer, self.reg_strength)

    def settings(self) -> dict[str, Any]:
        """The flat settings (`RECIPE_KEYS` + `layer_ratios`), every value resolved."""
        p, t = self.prune.to_dict(), self.finetune
        return {
            "model": self.model,
            "arch": self.arch,
            "dataset": self.dataset,
            "method": p["method"],
            "granularity": p["granularity"],
            "ratio": p["ratio"],
            "scope": p["scope"],
            "schedule": self.schedule.kind,
            "steps": self.schedule.steps,
            "finetune_epochs": t.epochs,
            "lr": t.lr,
            "optimizer": t.optimizer,
            "batch_size": t.batch_size,
            "weight_decay": t.weight_decay,
            "warmup": t.warmup,
            "min_steps_per_epoch": t.min_steps_per_epoch,
            "distill": t.distill_weight > 0,
            "keep_best": t.keep_best,
            "regularize": self.regularizer,
            "reg_strength": self.reg_strength,
            "device": t.device,
            "seed": self.seed,
            "norm": p["norm"],
            "ignore": p["ignore"],
            "max_layer_ratio": p["max_layer_ratio"],
            "structured_mode": p["structured_mode"],
            "round_to": p["round_to"],
            "calib_batches": p["calib_batches"],
            "layer_ratios": p["layer_ratios"],
        }

    def to_document(self, *, portable: bool = False) -> dict[str, Any]:
        """The `recipe.json` document: version, settings (what a run reads back) and the
        resolved configs (what it meant, for people and other tools).

        Args:
            portable: Reduce model and dataset paths to file names (`portable_ref`): what a
                recipe exported from the app carries, so no path of this machine leaves it.
        """
        settings = self.settings()
        if portable:
            settings["model"] = portable_ref(self.model, "model")
            settings["dataset"] = portable_ref(self.dataset, "dataset")
        reg = self.make_regularizer()
        return {
            "version": self.version,
            "settings": settings,
            "prune": self.prune.to_dict(),
            "schedule": self.schedule.to_dict(),
            "train": self.finetune.to_dict(),
            "regularize": reg.to_dict() if reg is not None else None,
            "seed": self.seed,
        }

    def text(self, fmt: str = "json", *, portable: bool = False) -> str:
        """The document as JSON or YAML text (both are read by `pruning-lab prune --recipe`).

        Raises:
            UserError: An unknown format.
        """
        doc = json.loads(json.dumps(self.to_document(portable=portable), default=json_default))
        if fmt == "json":
            return json.dumps(doc, indent=2) + "\n"
        if fmt in ("yaml", "yml"):
            import yaml

            return str(yaml.safe_dump(doc, sort_keys=False))
        raise UserError(f"unknown recipe format '{fmt}' (json or yaml)")


def _check_document(doc: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The checked settings of a recipe document (version, known keys, value ranges)."""
    recipe = doc.get("recipe", doc) if "settings" not in doc else doc
    if not isinstance(recipe, Mapping) or not isinstance(recipe.get("settings"), Mapping):
        raise UserError(f"{source} is not a pruning-lab recipe (no 'settings' mapping)")
    version = recipe.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise UserError(f"recipe {source}: 'version' must be an integer, got {brief(version)}")
    if not 1 <= version <= RECIPE_VERSION:
        raise UserError(
            f"recipe {source} has version {version}; this Pruning Lab reads versions up to "
            f"{RECIPE_VERSION} (a newer Pruning Lab wrote it)"
        )
    extra = sorted(set(recipe) - set(RECIPE_SECTIONS))
    if extra:
        raise UserError(
            f"recipe {source}: unknown key(s) {', '.join(repr(shown(k, 40)) for k in extra[:5])}; "
            "it may come from a newer Pruning Lab"
        )
    settings = dict(recipe["settings"])
    if "keep_best" not in settings:
        settings.update(_as_written(settings, recipe.get("train")))
    settings.update(_steps_as_written(settings, recipe.get("train")))
    return check_settings(settings, source)


# Fine-tune settings a recipe may leave out, and the field of its resolved `train` section
# that says what the run used.
_TRAIN_FIELDS = (("lr", "lr"), ("optimizer", "optimizer"), ("batch_size", "batch_size"),
                 ("weight_decay", "weight_decay"))  # fmt: skip


def _as_written(settings: Mapping[str, Any], train: Any) -> dict[str, Any]:
    """What a recipe written before `train.DEFAULT_FINETUNE` meant, so it repeats its run.

    Such a recipe records no `keep_best`: its fine-tune handed back the last epoch. The
    fine-tune settings it left out followed defaults that have changed since (per granularity
    then); its `train` section records the values the run used, and those are what it means
    (checked as any setting is). Recipes written since record every fine-tune setting.
    """
    out: dict[str, Any] = {"keep_best": False}
    if not isinstance(train, Mapping):
        return out
    for key, name in _TRAIN_FIELDS:
        if settings.get(key) is None and train.get(name) is not None:
            out[key] = train[name]
    weight = train.get("distill_weight")
    if settings.get("distill") is None and isinstance(weight, int | float):
        out["distill"] = not isinstance(weight, bool) and weight > 0
    return out


# Fine-tune settings recipes record since the default's warm-up and minimum of steps per epoch
# (commit 46be1c3), and what a recipe written before them meant when its `train` section does
# not record the field either: no warm-up (every default had none) and no minimum (there was
# none; the batch was `batch_size` whatever the dataset).
_STEP_SETTINGS = (("warmup", 0.0), ("min_steps_per_epoch", 0))


def _steps_as_written(settings: Mapping[str, Any], train: Any) -> dict[str, Any]:
    """The warm-up share and minimum of steps per epoch of a recipe written before they were
    settings, so it repeats its run instead of taking today's default.

    Such a recipe leaves the key out (a recipe written since always has it; an explicit null
    still means the default, as for every setting). Its `train` section records what the run
    used where the field existed then (`warmup` for long, `min_steps_per_epoch` since the
    default gained its minimum: runs between that change and these settings trained with it);
    without a record the value of the time (`_STEP_SETTINGS`). Checked as any setting is.
    """
    out: dict[str, Any] = {}
    for key, then in _STEP_SETTINGS:
        if key in settings:
            continue
        recorded = train.get(key) if isinstance(train, Mapping) else None
        out[key] = then if recorded is None else recorded
    return out
