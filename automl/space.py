"""Search-space YAML -> Optuna distributions over dotted TrialConfig keys.

    extends: hybrid_loss            # or a list; parents merge first, this file wins
    params:
      loss.terms.dice: {type: float, low: 0.05, high: 1.0}
      optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      data.resize: {type: categorical, choices: [0.5, 1.0], scale: dataset}   # fractions of the median side
    fixed:
      model.encoder: resnet34
    fidelity: {subsample: 0.5, max_epochs: 20, grace_period: 2, reduction_factor: 3}

A name is a file in search_spaces/ (hybrid_loss, architecture, resize, augmentation, schedule, full) or a
path to a YAML file of your own.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from automl.config import TrialConfig, read_yaml, validation_error_to_user_error
from automl.errors import UserError

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
SIZE_STEP = 32  # resized sides are multiples of this (encoders downsample by 32)


class ParamSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    type: str = Field(pattern="^(float|int|categorical)$")
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    scale: str | None = Field(None, pattern="^dataset$")

    @model_validator(mode="after")
    def _consistent(self) -> "ParamSpec":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"low {self.low} is greater than high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got {self.low}")
        return self


class Fidelity(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    subsample: float = Field(1.0, gt=0, le=1)
    max_epochs: int = Field(10, ge=1)
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2, gt=1)


class SpaceFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    description: str = ""
    extends: str | list[str] | None = None
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)
    fidelity: dict[str, Any] = Field(default_factory=dict)


@dataclass
class SearchSpace:
    name: str
    source: str
    params: dict[str, ParamSpec]
    fixed: dict[str, Any]
    fidelity: Fidelity
    description: str = ""
    resolved_scales: dict[str, list] = field(default_factory=dict)

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {key: to_distribution(spec) for key, spec in self.params.items()}

    def trial_config(self, sampled: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrialConfig:
        return TrialConfig(**unflatten({**self.fixed, **sampled, **(overrides or {})}))

    def default_point(self) -> dict[str, Any]:
        """The searched keys at the values a user writes by hand (TrialConfig's defaults under this space's
        pins; a loss term the default loss leaves out weighs 0), where the space can sample them."""
        try:
            defaults = TrialConfig(**unflatten(self.fixed)).model_dump()
        except ValidationError:
            return {}
        point = {}
        for key, spec in self.params.items():
            value = lookup(defaults, key)
            if value is None and key.startswith("loss.terms."):
                value = 0.0
            if value is not None and spec_contains(spec, value):
                point[key] = value
        return point

    @classmethod
    def from_dict(cls, data: dict) -> "SearchSpace":
        """The resolved space saved in study.yaml: a resumed study keeps exactly its distributions."""
        return cls(data["name"], data["source"], {k: ParamSpec(**v) for k, v in data["params"].items()},
                   dict(data["fixed"]), Fidelity(**data["fidelity"]), data.get("description", ""))

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "description": self.description,
                "params": {k: v.model_dump(exclude_none=True) for k, v in self.params.items()},
                "fixed": self.fixed, "fidelity": self.fidelity.model_dump()}


def to_distribution(spec: ParamSpec) -> optuna.distributions.BaseDistribution:
    if spec.type == "categorical":
        return optuna.distributions.CategoricalDistribution(spec.choices)
    if spec.type == "int":
        return optuna.distributions.IntDistribution(int(spec.low), int(spec.high), log=spec.log,
                                                    step=int(spec.step or 1))
    return optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)


def lookup(nested: dict[str, Any], key: str) -> Any:
    """nested["loss"]["terms"]["ce"] for "loss.terms.ce"; None where the path stops."""
    node: Any = nested
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def spec_contains(spec: ParamSpec, value: Any) -> bool:
    if spec.type == "categorical":
        return value in spec.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return spec.low <= value <= spec.high and (spec.type == "float" or float(value).is_integer())


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """{"loss.terms.ce": 0.3} -> {"loss": {"terms": {"ce": 0.3}}}."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"'{key}' sets inside a value that is not a mapping")
        node[leaf] = value
    return nested


def space_path(name: str | Path) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    candidate = SPACES_DIR / f"{name}.yaml"
    if not candidate.exists():
        known = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
        from trainables.registry import unknown_name_message

        raise UserError(unknown_name_message("search space", str(name), known), key="--space",
                        fix="pass one of those names or the path of your own YAML file")
    return candidate


def _read_space_file(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The merged raw mapping of a space file and its parents (parents first, this file wins)."""
    if path.resolve() in seen:
        raise UserError("`extends` makes a cycle", file=path, key="extends", fix="remove the loop")
    try:
        raw = SpaceFile(**read_yaml(path, "search space"))
    except ValidationError as e:
        raise validation_error_to_user_error(e, path, SpaceFile) from None
    merged = {"params": {}, "fixed": {}, "fidelity": {}, "description": raw.description}
    parents = [raw.extends] if isinstance(raw.extends, str) else (raw.extends or [])
    for parent in parents:
        parent_path = space_path(parent) if not (path.parent / parent).is_file() else path.parent / parent
        inherited = _read_space_file(parent_path, seen + (path.resolve(),))
        for section in ("params", "fixed", "fidelity"):
            merged[section].update(inherited[section])
    for key in merged["params"]:
        merged["fixed"].pop(key, None)  # among parents, what one searches beats what another pins
    merged["params"].update(raw.params)
    merged["fixed"].update(raw.fixed)
    merged["fidelity"].update(raw.fidelity)
    for key in raw.fixed:
        merged["params"].pop(key, None)  # pinning a key in a child removes its search
    for key in raw.params:
        merged["fixed"].pop(key, None)
    return merged


def load_space(name: str | Path, median_side: int | None = None, fixed_overrides: dict[str, Any] | None = None,
               defaults: dict[str, Any] | None = None) -> SearchSpace:
    """Read, merge and validate a space. Sizes with `scale: dataset` become pixels of `median_side`.
    `defaults` (what the data decided) pin keys the space neither searches nor pins; `fixed_overrides`
    (--set) pin keys whatever the space says."""
    path = space_path(name)
    merged = _read_space_file(path)
    unset = {key: value for key, value in (defaults or {}).items()
             if key not in merged["fixed"] and key not in merged["params"]}
    fixed = {**unset, **merged["fixed"], **(fixed_overrides or {})}
    params = {key: spec for key, spec in merged["params"].items() if key not in (fixed_overrides or {})}
    try:
        fidelity = Fidelity(**merged["fidelity"])
    except ValidationError as e:
        error = validation_error_to_user_error(e, path, Fidelity)
        error.key = f"fidelity.{error.key}"
        raise UserError(error.message, file=path, key=error.key, fix=error.fix) from None
    space = SearchSpace(Path(path).stem, str(path), dict(params), fixed, fidelity, merged["description"])
    scale_sizes(space, median_side)
    validate_space(space, path)
    return space


def scale_sizes(space: SearchSpace, median_side: int | None) -> None:
    for key, spec in list(space.params.items()):
        if spec.scale != "dataset":
            continue
        side = median_side or 256
        sizes = sorted({max(SIZE_STEP, int(round(side * float(f) / SIZE_STEP)) * SIZE_STEP) for f in spec.choices})
        space.resolved_scales[key] = list(spec.choices)
        if len(sizes) == 1:
            del space.params[key]
            space.fixed[key] = sizes[0]
        else:
            space.params[key] = ParamSpec(type="categorical", choices=sizes)
    for key, value in list(space.fixed.items()):
        if value == "dataset":  # e.g. `data.resize: dataset`
            space.fixed[key] = max(SIZE_STEP, int(round((median_side or 256) / SIZE_STEP)) * SIZE_STEP)


def _input_sizes(resize, crop) -> list[tuple[int, int]]:
    from automl.config import DataConfig

    try:
        return DataConfig(resize=resize, crop=crop).input_sizes()
    except ValueError:
        return []  # reported by the per-key checks


def validate_space(space: SearchSpace, path: Path) -> None:
    """Every value the space can produce must make a valid TrialConfig: names, types and ranges, and every
    architecture x encoder pair it can sample must be one smp builds."""
    base = dict(space.fixed)
    _check(space, base, path, key=None)
    for key, spec in space.params.items():
        values = spec.choices if spec.type == "categorical" else [spec.low, spec.high]
        if spec.type == "int":
            values = [int(v) for v in values]
        for value in values:
            _check(space, {**base, key: value}, path, key)
    _check_model_pairs(space, path)
    _check_one_average(space, path)


def _check_one_average(space: SearchSpace, path: Path) -> None:
    """EMA and SWA exclude each other: a space that can turn both on would fail those trials."""
    keys = [*space.params, *space.fixed]
    ema = [k for k in keys if k == "train.ema" and (k in space.params or space.fixed[k] is not None)]
    swa = [k for k in keys if k.startswith("train.swa") and (k in space.params or space.fixed[k] is not None)]
    if ema and swa:
        raise UserError(f"the space sets both {ema[0]} and {swa[0]}, which exclude each other", file=path,
                        key=swa[0], fix="search one of them: train.ema: {type: categorical, choices: [null, 0.99]} "
                                        "or train.swa.start: {type: categorical, choices: [null, 0.75]}")


def _check_model_pairs(space: SearchSpace, path: Path) -> None:
    """Each architecture x encoder pair, built without weights, runs the smallest and largest input sizes
    the space can produce."""
    from trainables.models import check_model

    def values(key: str, default) -> list:
        if key in space.params:
            return list(space.params[key].choices or [space.params[key].low, space.params[key].high])
        return [space.fixed.get(key, default)]

    defaults = TrialConfig()
    sizes = [size for resize in values("data.resize", defaults.data.resize) for crop in values("data.crop", None)
             for size in _input_sizes(resize, crop)]
    extremes = sorted(set(sizes), key=lambda size: size[0] * size[1])
    extremes = [extremes[0], extremes[-1]] if extremes else []
    channels = space.fixed.get("model.in_channels", defaults.model.in_channels)
    for arch in values("model.arch", defaults.model.arch):
        for encoder in values("model.encoder", defaults.model.encoder):
            try:
                check_model(str(arch), str(encoder), int(channels), extremes)
            except ValueError as e:
                section = "params" if "model.encoder" in space.params else "fixed"
                raise UserError(str(e), file=path, key=f"{section}.model.encoder",
                                fix=f"remove {arch} or {encoder} from the choices, or the sizes it cannot run"
                                ) from None


def _check(space: SearchSpace, flat: dict[str, Any], path: Path, key: str | None) -> None:
    try:
        candidate = dict(flat)
        if key is not None and key.startswith("loss.terms.") and candidate[key] == 0:
            candidate[key] = 1.0  # one term at zero is fine; other terms carry the loss
        TrialConfig(**unflatten(candidate))
    except ValueError as e:
        if isinstance(e, ValidationError):
            first = e.errors()[0]
            dotted = ".".join(str(p) for p in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            if first["type"] == "extra_forbidden":
                message = "not a TrialConfig key"
            where = key or dotted
            section = "params" if key else "fixed"
            raise UserError(message, file=path, key=f"{section}.{where}",
                            fix="see README.md: search spaces") from None
        raise UserError(str(e), file=path, key=key or "fixed") from None
