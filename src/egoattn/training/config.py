"""The training recipe: one typed, explicit description of a run.

A recipe says which model is built, which data it sees, which parameters train (and at which
learning rate), which modules stay in eval mode, and for how long. Every section rejects unknown
keys, so a typo in a YAML file or in `--set key=value` is an error naming the key and the file
instead of a silently ignored setting.

Shipped recipes live in `egoattn/recipes/<name>.yaml`; `egoattn recipes` lists them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from egoattn.errors import BadInputError, ConfigError
from egoattn.fileio import read_yaml

#: Lightning's precision names, as `train.precision` and `--precision` (evaluate, predict) take them.
Precision = Literal["32", "16-mixed", "bf16-mixed"]

#: Other names of shipped recipes (`egoattn train demo` = the CPU attention model of the demo).
ALIASES = {"demo": "cpu_egornn_cam"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    name: str  # a name of egoattn.models.registry (egornn, flow, twostream, two_in_one, frame_average)
    options: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of create_model


class DataSection(_Section):
    split: str = "gtea61"  # gtea61 | loso:SUBJECT | fpvo | all (egoattn.data.manifest.split_records)
    modalities: list[str] = Field(default_factory=lambda: ["rgb"])
    num_frames: int = Field(25, ge=1)
    sampler: str = "uniform"
    size: int = Field(224, ge=8)  # crop side fed to the network
    resize: int = Field(256, ge=8)  # short side before cropping
    flow_stack: int = Field(5, ge=1)  # flow frames per stack (10 channels = 5 x/y pairs)
    # The flow modalities' side when it differs from `size` (same crop box, resized): a two-stream model
    # initialised from streams trained at different sizes sees each at its own.
    flow_size: Optional[int] = Field(None, ge=8)
    # Where the training flow stack starts: "random" anywhere in the clip (the references), "centre" at
    # the test-time centred start +- flow_train_jitter flows (short clips whose phases differ in meaning).
    flow_train_start: Literal["random", "centre"] = "random"
    flow_train_jitter: int = Field(0, ge=0)
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(2, ge=0)
    val: Literal["holdout", "test"] = "holdout"  # holdout: a part of the training subjects' clips
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)


class OptimSection(_Section):
    name: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    eps: float = Field(1e-8, gt=0.0)  # adam only
    momentum: float = Field(0.9, ge=0.0)  # sgd only
    milestones: list[int] = Field(default_factory=list)  # epochs at which lr *= gamma
    gamma: float = Field(0.1, gt=0.0)
    per_epoch_gamma: Optional[float] = Field(None, gt=0.0)  # lr *= this after every epoch (x0.99)


class ParamGroup(_Section):
    match: list[str]  # fnmatch patterns on model.named_parameters() names
    lr: Optional[float] = Field(None, gt=0.0)  # default: optim.lr
    weight_decay: Optional[float] = Field(None, ge=0.0)  # default: optim.weight_decay


class ParamsSection(_Section):
    """What trains. A parameter matched by no group is frozen (requires_grad False)."""

    groups: list[ParamGroup] = Field(default_factory=lambda: [ParamGroup(match=["*"])])
    eval_modules: list[str] = Field(default_factory=list)  # fnmatch on named_modules(): kept in eval mode


class TrainSection(_Section):
    epochs: int = Field(1, ge=1)
    precision: Precision = "32"
    channels_last: bool = False
    gradient_clip: Optional[float] = Field(None, gt=0.0)
    devices: Optional[int] = Field(None, ge=1)  # None: one device
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    # With --cache-features: views cached per training clip. View 0 is the test transform; views 1.. are
    # drawn with the training sampler and transform (random crop, scale, flip), and every epoch reads one
    # view per clip at random, so a cached run still sees augmented clips.
    cache_views: int = Field(1, ge=1)

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class LossSection(_Section):
    ms_weight: float = Field(1.0, ge=0.0)  # alpha of L = L_cls + alpha * L_ms
    ms_kind: Literal["cls", "reg"] = "cls"
    ms_loss: Optional[str] = None  # cls: ce; reg: mse | l1 | smooth_l1 | soft_margin | kl (None: the first)
    ms_threshold: float = Field(0.5, ge=0.0, le=1.0)  # motion map > tau is "moving" (classification)
    order_weight: float = Field(1.0, ge=0.0)


class InitSection(_Section):
    # Which earlier runs' best checkpoints load into which submodule: {"": run} loads the whole model,
    # {"rgb": run1, "flow": run2} loads model.rgb and model.flow (joint two-stream).
    from_run: dict[str, str] = Field(default_factory=dict)
    # Joint two-stream: the new classifier starts "random" (the paper) or as the "late_fusion" of the two
    # loaded streams' classifiers (TwoStream.classifier_from_streams), so training starts from their accuracy.
    joint_classifier: Literal["random", "late_fusion"] = "random"


class Recipe(_Section):
    name: str
    description: str = ""
    seed: int = 0
    model: ModelSection
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    params: ParamsSection = Field(default_factory=ParamsSection)
    train: TrainSection = Field(default_factory=TrainSection)
    loss: LossSection = Field(default_factory=LossSection)
    init: InitSection = Field(default_factory=InitSection)


# --- loading --------------------------------------------------------------------------------------

def _format_errors(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {key!r}")
        elif err["type"] == "missing":
            parts.append(f"missing key {key!r}")
        else:
            parts.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


def validate_recipe(data: Any, source: str | Path) -> Recipe:
    """A Recipe from plain data, or a ConfigError naming `source` and every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_format_errors(e)}") from None


def _shipped() -> dict[str, Any]:
    folder = resources.files("egoattn") / "recipes"
    return {p.name[: -len(".yaml")]: p for p in folder.iterdir() if p.name.endswith(".yaml")}


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name (`cpu_egornn`, `demo`), or a YAML file by path."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{path}: recipe file not found")
        try:
            data = read_yaml(path)
        except BadInputError as e:
            raise ConfigError(str(e)) from None
        return validate_recipe(data, path)
    shipped = _shipped()
    name = ALIASES.get(text, text)
    if name not in shipped:
        raise ConfigError(f"unknown recipe {text!r}; shipped: {', '.join(sorted(shipped))} (or give a YAML path)")
    source = f"recipes/{name}.yaml"
    try:
        data = yaml.safe_load(shipped[name].read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({e})") from None
    return validate_recipe(data, source)


def list_recipes() -> dict[str, str]:
    """Shipped recipe names (and aliases) with their one-line descriptions."""
    out = {name: load_recipe(name).description for name in sorted(_shipped())}
    for alias, target in ALIASES.items():
        out[alias] = f"= {target}: {out.get(target, '')}"
    return out


def dump_recipe(recipe: Recipe) -> str:
    """YAML text of the resolved recipe (what a run directory's config.yaml holds)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, default_flow_style=None, width=100)


# --- overrides ------------------------------------------------------------------------------------

def _section_class(cls: type[BaseModel] | None, key: str) -> type[BaseModel] | None:
    """The pydantic class of field `key` of `cls`, or None when the field is a free dict."""
    if cls is None:
        return None
    annotation = cls.model_fields[key].annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def apply_overrides(recipe: Recipe, overrides: list[str] | tuple[str, ...]) -> Recipe:
    """Apply `key.sub=value` overrides (value parsed as YAML) and validate the result again.

    Keys of the typed sections must exist; keys inside free mappings (`model.options.*`,
    `init.from_run.*`) may be new.
    """
    data = recipe.model_dump(mode="json")
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. optim.lr=0.01")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        node: Any = data
        cls: type[BaseModel] | None = Recipe
        parts = key.split(".")
        for i, part in enumerate(parts):
            if cls is not None and part not in cls.model_fields:
                where = ".".join(parts[:i]) or "the recipe"
                raise ConfigError(f"override {item!r}: unknown key {key!r} ({where} has {sorted(cls.model_fields)})")
            if i == len(parts) - 1:
                node[part] = value
                break
            cls = _section_class(cls, part)
            child = node.get(part)
            if child is None and cls is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = child
    return validate_recipe(data, f"{recipe.name} with overrides {list(overrides)}")
