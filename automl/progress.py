"""Search progress in the terminal: a rich progress bar and one line per finished trial."""

from __future__ import annotations

from pathlib import Path

from ray.tune import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from automl.display import format_value, short


class SearchProgress(Callback):
    def __init__(self, total: int, max_epochs: int, param_keys: list[str], study_dir: Path,
                 console: Console | None = None):
        self.total, self.max_epochs, self.param_keys = total, max_epochs, param_keys
        self.study_dir = Path(study_dir)
        self.console = console or Console()
        self.progress: Progress | None = None
        self.task = None

    def __getstate__(self) -> dict:  # Ray saves callbacks with the experiment; a live bar does not pickle
        return {**self.__dict__, "console": None, "progress": None, "task": None}

    def __enter__(self) -> "SearchProgress":
        # the bar counts trials and seconds: redrawn ten times a second (rich's default) it only takes CPU
        # from the trials
        self.progress = Progress(TextColumn("search"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=self.console, transient=True, refresh_per_second=1)
        self.progress.start()
        self.task = self.progress.add_task("trials", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()

    def _line(self, trial, state: str, detail: str = "") -> None:
        from automl.search_trial import TRIAL_NUMBER

        result = trial.last_result or {}
        number = trial.config.get(TRIAL_NUMBER, "?")
        params = " ".join(f"{short(k)}={format_value(trial.config[k])}" for k in self.param_keys if k in trial.config)
        score = f"score {result['best_score']:.4f}" if "best_score" in result else "score   -   "
        seconds = result.get("time_total_s", 0.0)
        text = (f"trial {number:>4}  {state:<8}  {score}  epochs {int(result.get('epoch', 0))}/{self.max_epochs}  "
                f"{params}  ({seconds:.0f}s){detail}")
        (self.progress.console if self.progress else (self.console or Console())).print(text, soft_wrap=True,
                                                                                        highlight=False)
        if self.progress is not None:
            self.progress.advance(self.task)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        from automl.search_trial import final_state

        self._line(trial, final_state(trial.last_result, False, self.max_epochs))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        from automl.search_trial import TRIAL_NUMBER

        error_file = self.study_dir / "trials" / f"{trial.config.get(TRIAL_NUMBER, -1):04d}" / "error.txt"
        detail = f"  {error_file.read_text().strip()}" if error_file.exists() else ""
        self._line(trial, "FAIL", detail)
