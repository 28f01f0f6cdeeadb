"""What `automl promote`, `refit` and `ensemble` leave on disk, typed: promote.json (the plan), each fold's
and refit's done.json, ensemble.json, and where the checkpoints and OOF files live. Readers (ensemble,
refit, predict, report) use these instead of string keys;
nothing here imports Ray or torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from automl import store
from automl.errors import UserError

Record = TypeVar("Record", bound=BaseModel)


def model_name(trial_number: int) -> str:
    return f"trial{trial_number:04d}"


class PromotedModel(BaseModel):
    trial: int
    search_score: float | None
    config: dict  # the TrialConfig as JSON, with the promote epochs
    data: str | None = None  # the dataset.yaml it trained on when not the study's (e.g. with pseudo-labels)


class PromotePlan(BaseModel):
    """promote.json: the promoted models and what every fold shares."""

    models: dict[str, PromotedModel] = {}
    folds: int
    eval_size: tuple[int, int]
    metric: str
    task: str
    class_names: list[str]

    def name_of(self, text: str) -> str:
        """A promoted model's name from what a user typed: its name, or its trial number."""
        return model_name(int(text)) if text not in self.models and text.isdigit() else text


class FoldResult(BaseModel):
    """promoted/<model>/fold<k>/done.json: written last, so its presence means the fold is complete.
    `score` is the score of `checkpoint` on the fold's validation images (those its OOF covers)."""

    model: str
    fold: int
    ids: list[str]
    score: float
    checkpoint: str = "best.pt"  # studies promoted before the final checkpoint was kept
    best_epoch: int
    best_score: float | None = None
    epochs: int
    node_id: str | None = None  # the Ray node that trained it


class RefitResult(BaseModel):
    """promoted/<model>/full/done.json: the model's config trained once on every training image (no image
    held out, so no score), written last."""

    model: str
    epochs: int
    promote_epochs: int  # each fold model's, whose OOF predictions the ensemble decided on
    images: int  # training images: the ids of folds.json, every one of them
    steps: int
    config: dict  # the TrialConfig it trained with; a different request retrains it
    checkpoint: str = "final.pt"


def load_record(cls: type[Record], path: Path, fix: str) -> Record:
    try:
        return cls.model_validate(store.read_json(path))
    except ValidationError as e:
        raise UserError(f"{path} is not a valid {cls.__name__} ({e.error_count()} fields differ, e.g. "
                        f"{e.errors()[0]['loc']})", file=path, fix=fix) from None


class PromotedPaths:
    def __init__(self, study_dir: str | Path):
        self.root = Path(study_dir)

    def fold_dir(self, model: str, fold: int) -> Path:
        return self.root / "promoted" / model / f"fold{fold}"

    def is_done(self, model: str, fold: int) -> bool:
        return (self.fold_dir(model, fold) / "done.json").exists()

    def fold_result(self, model: str, fold: int) -> FoldResult:
        return load_record(FoldResult, self.fold_dir(model, fold) / "done.json",
                           fix=f"remove {self.fold_dir(model, fold)} and rerun `automl promote` to retrain the fold")

    def checkpoint(self, model: str, fold: int) -> Path:
        return self.fold_dir(model, fold) / self.fold_result(model, fold).checkpoint

    def refit_dir(self, model: str) -> Path:
        return self.root / "promoted" / model / "full"

    def is_refit(self, model: str) -> bool:
        return (self.refit_dir(model) / "done.json").exists()

    def refit_result(self, model: str) -> RefitResult:
        return load_record(RefitResult, self.refit_dir(model) / "done.json",
                           fix=f"remove {self.refit_dir(model)} and rerun `automl refit` to retrain it")

    def refit_checkpoint(self, model: str) -> Path:
        return self.refit_dir(model) / self.refit_result(model).checkpoint

    def oof(self, model: str) -> tuple[Path, Path]:
        return self.root / "oof" / f"{model}.npy", self.root / "oof" / f"{model}.json"

    @property
    def plan(self) -> Path:
        return self.root / "promote.json"

    def load_plan(self) -> PromotePlan:
        return load_record(PromotePlan, self.plan, fix="rerun `automl promote STUDY`: it rewrites the plan")

    def require_plan(self, study: str, fix: str | None = None) -> PromotePlan:
        """promote.json, or one line saying the study has no promoted models yet."""
        if not self.plan.exists():
            raise UserError(f"study '{study}' has no promoted models", key="STUDY",
                            fix=fix or f"run `automl promote {study}` first")
        return self.load_plan()

    @property
    def folds(self) -> Path:
        return self.root / "folds.json"


class EnsembleResult(BaseModel):
    """ensemble.json. Scores are cross-validated over the promote folds (each fold scored by decisions made
    on the other folds) unless named `_in_sample`, and measured per image at its original size as
    `predict --evaluate` measures them (decisions are made at eval_size); `members`, `weights`, `thresholds`
    and `postprocess` are the final decision, made on all OOF images, that `predict` applies."""

    members: list[str]
    weights: list[float]
    thresholds: list[float] | None
    postprocess: dict[str, list[bool]] | None
    score: float
    score_in_sample: float
    best_single: float
    best_single_model: str
    uniform: float
    hard_vote: float
    vote_70: float
    single_scores: dict[str, float]  # each model alone at threshold 0.5, no postprocessing, in sample, at eval_size
    fell_back_to_best_single: bool
    per_class: list[float | None]
    class_names: list[str] | None = None
    worst: list[dict[str, str]]
    metric: str
    task: str
    eval_size: list[int]
    folds: int
    max_size: int
    bags: int
    seed: int = 0  # of the bagging draws: with the folds it makes `score` reproducible
    history: list[dict]
    per_image_csv: str

    @classmethod
    def load(cls, path: str | Path) -> "EnsembleResult":
        return load_record(cls, Path(path),
                           fix="rerun `automl ensemble STUDY`: it rewrites the file from the OOF predictions")
