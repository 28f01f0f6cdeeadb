"""Validated, frozen settings read from the user's YAML files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from automl.errors import UserError
from trainables.registry import close_matches

Task = Literal["multiclass", "multilabel", "binary"]
BACKGROUND = "background"
POLYGON_FORMATS = ("coco", "polygon_json")
MIN_STEPS_PER_EPOCH = 25


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LabelsSpec(Frozen):
    format: str = Field(description="coco | polygon_json | mask_png")
    path: str = Field(description="COCO JSON file, or the folder of label files; relative to the YAML")


class GroupField(Frozen):
    field: str = Field(description="a field of the COCO `images` entries, e.g. patient_id")


class FlipPolicy(Frozen):
    """How horizontal flips treat the classes: off, or on with mirrored class pairs swapped (left/right lung)."""

    horizontal: bool = Field(True, description="false: no horizontal flip in any augmentation set or TTA")
    pairs: list[tuple[str, str]] = Field(default_factory=list,
                                         description="classes that trade places when the image is mirrored")

    @model_validator(mode="after")
    def _consistent(self) -> "FlipPolicy":
        if self.pairs and not self.horizontal:
            raise ValueError("pairs are swapped when flipping; with horizontal: false there is no flip: "
                             "keep one of the two")
        named = [name for pair in self.pairs for name in pair]
        twice = sorted({name for name in named if named.count(name) > 1})
        if twice:
            raise ValueError(f"a class can be in one mirrored pair only, got {twice} more than once")
        return self

    def swaps(self, class_names: list[str]) -> list[tuple[int, int]]:
        """The pairs as output-channel indices (multiclass: mask values)."""
        index = {name: i for i, name in enumerate(class_names)}
        unknown = [name for pair in self.pairs for name in pair if name not in index]
        if unknown:
            raise UserError(f"flips.pairs names {unknown}, which this dataset does not have (classes: "
                            f"{', '.join(class_names)})", key="data.flips",
                            fix="use the class names of the dataset.yaml, or drop data.flips from the config")
        return [(index[a], index[b]) for a, b in self.pairs]

    def describe(self) -> str:
        if not self.horizontal:
            return "no horizontal flips"
        if self.pairs:
            return "horizontal flips swap " + ", ".join(f"{a} <-> {b}" for a, b in self.pairs)
        return "plain horizontal flips"


class PseudoSpec(Frozen):
    """Pseudo-labelled images (written by `automl pseudo`): training-only, never validated or scored."""

    images: str = Field(description="glob of the images, absolute or relative to `root`")
    masks: str = Field(description="folder of <image stem>.npy masks; `ignore` marks unsure pixels")
    fold_masks: str | None = Field(None, description="folder of fold {fold}'s masks, made without that fold's "
                                                     "labels: promote's fold k trains on these")
    folds_file: str | None = Field(None, description="the folds.json whose folds fold_masks follow")
    folds_fingerprint: str | None = Field(None, description="those folds' Splits.fingerprint when the masks were "
                                                            "made (a folds.json split again is other folds)")
    ignore: int = Field(255, ge=0, le=255, description="the mask value of a pixel the loss leaves out")


class DatasetSpec(Frozen):
    name: str
    task: Task
    classes: list[str] = Field(min_length=1)
    images: str = Field(description="glob of the images, relative to `root`")
    labels: LabelsSpec
    groups: str | GroupField | None = Field(default=None, description="regex on the relative image path")
    ignore_index: int | None = None
    root: Path = Field(default=Path("."), description="where relative paths start; default: the YAML's folder")
    cache_dir: str | None = Field(default=None, description="decoded + resized arrays; default: <root>/.cache/automl")
    flips: FlipPolicy | None = Field(default=None, description="absent: `automl data audit` decides")
    exclude: str | None = Field(default=None, description="file of image ids (one per line) left out of training")
    pseudo: PseudoSpec | None = Field(default=None, description="pseudo-labelled training-only images")
    source: str = Field(default="", description="the dataset.yaml this came from (set by the loader)")

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, classes: list[str]) -> list[str]:
        duplicates = sorted({c for c in classes if classes.count(c) > 1})
        if duplicates:
            raise ValueError(f"class names must be unique, got {duplicates} more than once")
        return classes

    @field_validator("groups")
    @classmethod
    def _valid_regex(cls, groups: str | GroupField | None) -> str | GroupField | None:
        if isinstance(groups, str):
            try:
                re.compile(groups)
            except re.error as e:
                raise ValueError(f"not a valid regular expression ({e})") from None
        return groups

    @model_validator(mode="after")
    def _task_rules(self) -> "DatasetSpec":
        if self.ignore_index is not None and not 0 <= self.ignore_index <= 255:
            raise ValueError(f"ignore_index must be in 0..255, got {self.ignore_index}")
        if self.task == "multiclass" and self.ignore_index is not None and self.ignore_index < self.num_outputs:
            raise ValueError(f"ignore_index {self.ignore_index} is a class index; use a value >= {self.num_outputs}")
        if self.task == "multiclass" and self.num_outputs > 254:
            raise ValueError(f"at most 254 classes fit a uint8 mask, got {self.num_outputs}")
        if isinstance(self.groups, GroupField) and self.labels.format != "coco":
            raise ValueError("groups: {field: ...} needs labels.format coco; use a regex on the path instead")
        if self.flips is not None:
            self._check_pairs(self.flips)
        if self.pseudo and self.effective_ignore_index is not None and self.pseudo.ignore != self.effective_ignore_index:
            raise ValueError(f"pseudo.ignore {self.pseudo.ignore} differs from the labels' ignore_index "
                             f"{self.effective_ignore_index}: the loss leaves out one value")
        return self

    def _check_pairs(self, flips: FlipPolicy) -> None:
        from trainables.registry import unknown_name_message

        names = [] if self.task == "binary" else [c for c in self.class_names if c != BACKGROUND]
        for name in (name for pair in flips.pairs for name in pair):
            if name not in names:
                raise ValueError(unknown_name_message("class in flips.pairs", name, names) if names else
                                 "a binary task has one class: there is no pair to swap")

    @property
    def class_names(self) -> list[str]:
        """Names of the model's output channels (multiclass: index = pixel value of the mask)."""
        if self.task == "binary":
            return ["foreground"] if len(self.classes) > 1 else list(self.classes)
        if self.task == "multiclass" and self.labels.format in POLYGON_FORMATS and self.classes[0] != BACKGROUND:
            return [BACKGROUND, *self.classes]
        return list(self.classes)

    @property
    def num_outputs(self) -> int:
        return 1 if self.task == "binary" else len(self.class_names)

    @property
    def effective_ignore_index(self) -> int | None:
        if self.ignore_index is None and self.task == "multiclass":
            return 255
        return self.ignore_index

    def for_fold(self, fold: int) -> "DatasetSpec":
        """The spec promote's fold `fold` trains with: pseudo-labels made by models that never saw that
        fold's labels (else its out-of-fold score would learn them through the pseudo-labels)."""
        if self.pseudo is None or self.pseudo.fold_masks is None:
            return self
        masks = self.pseudo.fold_masks.format(fold=fold)
        return self.model_copy(update={"pseudo": self.pseudo.model_copy(update={"masks": masks})})

    @property
    def training_ignore_index(self) -> int | None:
        """The target value the loss leaves out: the labels' ignore_index, else pseudo-labels' unsure pixels."""
        if self.effective_ignore_index is not None:
            return self.effective_ignore_index
        return self.pseudo.ignore if self.pseudo else None

    def resolve(self, relative: str | Path) -> Path:
        return (self.root / relative).resolve()

    @property
    def cache_root(self) -> Path:
        return self.resolve(self.cache_dir) if self.cache_dir else self.resolve(".cache/automl")


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """safe_load a YAML mapping, turning every way it can fail into one UserError line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found", file=path, fix="check the path")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "cannot parse"
        raise UserError(f"invalid YAML{where}: {problem}", file=path, fix="correct the YAML syntax") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {what}: {e}", file=path) from None
    if not isinstance(data, dict):
        raise UserError(f"{what} must be a YAML mapping of keys, got {type(data).__name__}", file=path,
                        fix="write `key: value` lines")
    return data


def validation_error_to_user_error(error: ValidationError, path: str | Path, model: type[BaseModel]) -> UserError:
    """First pydantic error -> one line naming the dotted key and how to fix it."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or None
    kind = first["type"]
    if kind == "missing":
        return UserError("required key is missing", file=path, key=key, fix=f"add `{key}:` to the file")
    if kind == "extra_forbidden":
        known = _known_keys(model, first["loc"][:-1])
        close = close_matches(str(first["loc"][-1]), known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return UserError("unknown key", file=path, key=key, fix=f"{hint}valid keys: {', '.join(known)}")
    message = first["msg"].removeprefix("Value error, ")
    return UserError(message, file=path, key=key, fix="see README.md for the valid values")


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return list(model.model_fields)


def load_dataset_spec(path: str | Path) -> DatasetSpec:
    """dataset.yaml -> DatasetSpec with `root` resolved, label format and paths checked."""
    path = Path(path)
    data = read_yaml(path, "dataset.yaml")
    root = (path.parent / data.pop("root", ".")).resolve() if isinstance(data.get("root", "."), str) else None
    if root is None:
        raise UserError("must be a folder path", file=path, key="root")
    try:
        spec = DatasetSpec(**{**data, "root": root, "source": str(path)})
    except ValidationError as e:
        raise validation_error_to_user_error(e, path, DatasetSpec) from None
    from automl.data.formats import check_format  # late: the readers import this module

    check_format(spec.labels.format, file=path)
    if not spec.resolve(spec.labels.path).exists():
        raise UserError(f"{spec.resolve(spec.labels.path)} does not exist", file=path, key="labels.path",
                        fix="point it at the COCO JSON file or the folder of label files")
    return spec


# ---------------------------------------------------------------- one training run



class ModelConfig(Frozen):
    arch: str = "unet"
    encoder: str = "resnet18"
    encoder_weights: str | None = None  # None: nothing is downloaded; "imagenet" needs the network once
    in_channels: Literal[1, 3] = 3  # 1: gray images go in as they are (search decides it from the images)

    @model_validator(mode="after")
    def _known_names(self) -> "ModelConfig":
        from trainables.models import check_arch, check_encoder, check_model

        check_arch(self.arch)
        check_encoder(self.encoder, self.arch)
        check_model(self.arch, self.encoder, self.in_channels)
        return self


class DataConfig(Frozen):
    resize: int | tuple[int, int] = 256
    augment: str = "light"
    batch_size: int = Field(8, ge=1)
    crop: int | None = Field(None, ge=8, description="train on crops of this side (CropNonEmptyMaskIfExists)")
    flips: FlipPolicy | None = Field(None, description="None: the dataset.yaml's `flips`, else plain flips")

    @property
    def resized(self) -> tuple[int, int]:
        """(height, width) of the resized image."""
        return (self.resize, self.resize) if isinstance(self.resize, int) else tuple(self.resize)

    @property
    def prediction_tile(self) -> int | None:
        """The tile side whole images are predicted in: the training crop, when the resized image is larger
        (what the model saw in training, as nnU-Net predicts its patches); None: whole."""
        return self.crop if self.crop is not None and max(self.resized) > self.crop else None

    def input_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of what the model sees: training crops (if any) and the resized image."""
        return [(self.crop, self.crop), self.resized] if self.crop else [self.resized]

    @model_validator(mode="after")
    def _crop_fits(self) -> "DataConfig":
        if self.crop is not None and self.crop > min(self.resized):
            raise ValueError(f"crop {self.crop} is larger than the resized image {self.resize}")
        return self

    @field_validator("augment")
    @classmethod
    def _known_augment(cls, name: str) -> str:
        from trainables.augment import AUGMENTATIONS

        return AUGMENTATIONS.check(name)

    @field_validator("resize")
    @classmethod
    def _positive(cls, size):
        sides = (size, size) if isinstance(size, int) else size
        if min(sides) < 16:
            raise ValueError(f"resize must be at least 16 pixels, got {size}")
        return size


class LossConfig(Frozen):
    terms: dict[str, float] = Field(default_factory=lambda: {"ce": 0.3, "dice": 0.7})

    @field_validator("terms")
    @classmethod
    def _known_terms(cls, terms: dict[str, float]) -> dict[str, float]:
        from trainables.losses import check_terms

        return check_terms(terms)


class OptimConfig(Frozen):
    name: str = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)

    @field_validator("name")
    @classmethod
    def _known_optimizer(cls, name: str) -> str:
        from trainables.optim import OPTIMIZERS

        return OPTIMIZERS.check(name)


class ScheduleConfig(Frozen):
    name: str = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)

    @field_validator("name")
    @classmethod
    def _known_schedule(cls, name: str) -> str:
        from trainables.optim import check_schedule

        return check_schedule(name)


class SwaConfig(Frozen):
    start: float = Field(0.75, gt=0, lt=1, description="average the weights of the epochs after this fraction "
                                                       "of the run")


class TrainConfig(Frozen):
    epochs: int = Field(10, ge=1)
    # An epoch is max(one pass over the training images, this many optimizer steps), so a small dataset
    # is not starved: the same --max-epochs means comparable training on 20 images and on 2000.
    min_steps_per_epoch: int = Field(MIN_STEPS_PER_EPOCH, ge=1)
    amp: bool = True  # used only where CUDA is present
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    # weight averaging (trainables/averaging.py): the averaged model is validated and saved
    ema: float | None = Field(None, gt=0, lt=1, description="EMA decay of the weights, e.g. 0.999")
    swa: SwaConfig | None = None

    @field_validator("swa", mode="before")
    @classmethod
    def _swa_off(cls, value):
        """`train.swa.start: null` (a searched choice) means no SWA."""
        return None if isinstance(value, dict) and value.get("start", 0.75) is None else value

    @model_validator(mode="after")
    def _one_average(self) -> "TrainConfig":
        if self.ema is not None and self.swa is not None:
            raise ValueError("ema and swa exclude each other: set one of them")
        return self


class TrialConfig(Frozen):
    """Everything one training run needs besides the data; saved as config.json beside every run."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _model_runs_at_its_input_sizes(self) -> "TrialConfig":
        """The model must take the sizes it will see (a Swin encoder wants 224, PAN at least 128)."""
        from trainables.models import check_model

        check_model(self.model.arch, self.model.encoder, self.model.in_channels, self.data.input_sizes())
        return self


def parse_trial_config(data: dict[str, Any], source: str | Path = "<config>") -> TrialConfig:
    try:
        return TrialConfig(**data)
    except ValidationError as e:
        raise validation_error_to_user_error(e, source, TrialConfig) from None


def load_trial_config(path: str | Path, defaults: dict[str, Any] | None = None) -> TrialConfig:
    """A TrialConfig file; `defaults` (dotted keys, what the data decided) fill keys the file leaves unset."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.suffix == ".json" and path.is_file() else read_yaml(path, "trial config")
    for dotted, value in (defaults or {}).items():
        node, *parents, leaf = [data, *dotted.split(".")]
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = value
    return parse_trial_config(data, path)


# ---------------------------------------------------------------- a study

class StudySettings(BaseModel):
    """The resolved settings of a search, saved as runs/<study>/study.yaml: later commands read them."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    study: str
    dataset: str  # absolute path of the dataset.yaml
    task: str
    metric: str
    space: dict[str, Any]  # the resolved search space (SearchSpace.to_dict)
    trials: int
    seed: int
    storage: str
    val_fraction: float
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int | None = None
    time_budget: float | None = None
    wandb: str = "offline"
    created: str = ""
    decisions: dict[str, Any] = {}  # what the data decided (automl.plan): input channels, flips
    heartbeat: int = 10  # seconds between heartbeats of a running trial; every driver of the study uses it
