"""`automl status` (a leaderboard read from the Optuna storage) and `automl dashboard` (optuna-dashboard)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from automl import store
from automl.errors import UserError
from automl.display import format_value, short

STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}


def load_study(runs_dir: str | Path, study: str):
    import optuna

    run_dir = store.RunDir(runs_dir, study)
    settings = run_dir.settings()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return settings, open_study(settings.storage, study)
    except KeyError:  # Optuna's "Record does not exist": study.yaml names a storage without this study
        raise UserError(f"{run_dir.settings_file}: its storage {settings.storage} holds no study '{study}'",
                        key="storage", fix="point `storage` in study.yaml at the database the search wrote") from None


def open_study(url: str, study: str):
    import optuna

    from automl.study_storage import open_storage

    try:
        return optuna.load_study(study_name=study, storage=open_storage(url, reader=True))
    except (UserError, KeyError):
        raise
    except Exception:  # the reader skips Optuna's schema check: let the full storage say what is wrong
        return optuna.load_study(study_name=study, storage=open_storage(url))


def ranked_trials(study) -> list:
    """COMPLETE by score, then PRUNED by their last score, then the rest."""
    def key(trial):
        value = trial.value if trial.value is not None else float("-inf")
        return STATE_ORDER.get(trial.state.name, 5), -value, trial.number
    return sorted(study.get_trials(deepcopy=False), key=key)


def leaderboard(runs_dir: str | Path, study_name: str, console: Console | None = None, limit: int = 30) -> list[dict]:
    settings, study = load_study(runs_dir, study_name)
    console = console or Console()
    keys = list(settings.space.get("params", {}))
    rows = []
    for rank, trial in enumerate(ranked_trials(study), start=1):
        rows.append({"rank": rank, "trial": trial.number, "state": trial.state.name, "score": trial.value,
                     "epochs": trial.user_attrs.get("epochs", len(trial.intermediate_values)),
                     "minutes": trial.user_attrs.get("wall_time_s", 0.0) / 60,
                     "params": {k: trial.params[k] for k in keys if k in trial.params},
                     "error": trial.user_attrs.get("error") or trial.user_attrs.get("nonfinite_loss", "")})
    table = Table("rank", "trial", settings.metric, "state", "epochs", *[short(k) for k in keys], "min",
                  title=f"study {study_name}: {len(rows)} trials, {settings.trials} asked")
    for row in rows[:limit]:
        score = f"{row['score']:.4f}" if row["score"] is not None else "-"
        table.add_row(str(row["rank"]), str(row["trial"]), score, row["state"], str(row["epochs"]),
                      *[format_value(row["params"].get(k, "")) for k in keys], f"{row['minutes']:.1f}")
    console.print(table)
    counts = {state: sum(r["state"] == state for r in rows) for state in STATE_ORDER}
    console.print(", ".join(f"{state.lower()} {n}" for state, n in counts.items() if n))
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    if complete:
        best = complete[0]
        console.print(f"best: trial {best['trial']} {settings.metric} {best['score']:.4f} -> "
                      f"{store.RunDir(runs_dir, study_name).trial_dir(best['trial'])}")
    for row in rows:
        if row["error"]:
            console.print(f"trial {row['trial']} {row['state'].lower()}: {row['error']}", soft_wrap=True)
    note = unlearned_classes_note(store.RunDir(runs_dir, study_name), settings)
    if note:
        console.print(f"[yellow]{note}[/yellow]", soft_wrap=True)
    return rows


def last_rows(run: store.RunDir) -> list[dict]:
    """The last epoch of every trial that finished one (metrics.csv), without pandas: status stays light."""
    import csv

    rows = []
    for path in sorted(run.root.glob("trials/*/metrics.csv")):
        with open(path, newline="") as f:
            epochs = list(csv.DictReader(f))
        if epochs:
            rows.append(epochs[-1])
    return rows


UNLEARNED_IOU = 0.01


def unlearned_classes_note(run: store.RunDir, settings) -> str | None:
    """Classes that no trial learned (IoU below 0.01 at every trial's last epoch): the search ranked its
    trials on the other classes only, so its pick says nothing about these. Short trials on rare classes
    (a sonar set's 10 small objects after 75 steps) are the usual cause."""
    import json

    last = [row for row in last_rows(run) if row.get("per_class")]
    if not last:
        return None
    per_trial = [json.loads(row["per_class"]) for row in last]
    count = min(len(scores) for scores in per_trial)
    unlearned = [c for c in range(count) if all(scores[c] < UNLEARNED_IOU for scores in per_trial)]
    if not unlearned:
        return None
    names = class_names(settings, count)
    steps = max(int(float(row.get("steps") or 0)) for row in last)
    listed = ", ".join(names[c] for c in unlearned[:8]) + (", ..." if len(unlearned) > 8 else "")
    return (f"no trial learned {len(unlearned)} of {count} classes ({listed}) in up to {steps} steps: the "
            f"ranking rests on the other {count - len(unlearned)}; give trials more steps (--max-epochs, or "
            f"--set train.min_steps_per_epoch=N) before trusting it")


def class_names(settings, count: int) -> list[str]:
    """The dataset's class names when they match the scores, else class 0, class 1, ..."""
    from automl.config import load_dataset_spec

    try:
        spec = load_dataset_spec(settings.dataset)
        names = list(spec.classes)
        if len(names) != count:
            names = [name for name in names if name != "background"]
    except Exception:  # the dataset moved since the search: numbers still say which
        names = []
    return names if len(names) == count else [f"class {c}" for c in range(count)]


def dashboard_command(runs_dir: str | Path, study: str, port: int = 8080) -> list[str]:
    settings = store.RunDir(runs_dir, study).settings()
    return ["optuna-dashboard", settings.storage, "--host", "127.0.0.1", "--port", str(port)]


def serve_dashboard(runs_dir: str | Path, study: str, port: int = 8080, echo=print) -> None:
    """optuna-dashboard on 127.0.0.1 only: the study is not published to the network."""
    from optuna_dashboard import run_server

    from automl.study_storage import open_storage

    if not 1 <= port <= 65535:
        raise UserError(f"--port must be in 1..65535, got {port}", key="--port")
    settings = store.RunDir(runs_dir, study).settings()
    echo(f"optuna-dashboard for study '{study}' at http://127.0.0.1:{port}  (Ctrl-C stops it)")
    run_server(open_storage(settings.storage), host="127.0.0.1", port=port)
