"""The study as one static, self-contained HTML page: plots are PNGs embedded as data URIs, no network.

Reads the run directory only (study.yaml, optuna.db, trials/, promoted/, ensemble.json, worst/) and the
audit CSV beside the dataset.yaml when there is one. A section without data yet says so.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from automl import store  # noqa: E402
from automl.config import MIN_STEPS_PER_EPOCH, FlipPolicy  # noqa: E402
from automl.errors import UserError  # noqa: E402
from automl.promoted import EnsembleResult, FoldResult, RefitResult  # noqa: E402
from automl.status import unlearned_classes_note  # noqa: E402

SECTIONS = ("summary", "leaderboard", "history", "importance", "rungs", "parallel", "loss-weights", "folds",
            "ensemble", "per-class", "worst", "audit")
STATE_COLOURS = {"COMPLETE": "#2b8a3e", "PRUNED": "#e67700", "FAIL": "#c92a2a", "RUNNING": "#1971c2"}
STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.9rem} td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left} .empty{color:#888;font-style:italic}
img{max-width:100%} .grid{display:flex;flex-wrap:wrap;gap:1rem} .muted{color:#666;font-size:.9rem} .warn{color:#a15c00}
"""


def figure_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def file_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def empty(text: str) -> str:
    return f'<p class="empty">{html.escape(text)}</p>'


def table(frame: pd.DataFrame, floats: str = "{:.4f}") -> str:
    return frame.to_html(index=False, border=0, float_format=lambda v: floats.format(v), na_rep="-")


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'


def load_trials(runs_dir: str | Path, study_name: str) -> tuple[object, object, pd.DataFrame]:
    from automl.status import load_study

    settings, study = load_study(runs_dir, study_name)
    rows = []
    for trial in study.get_trials(deepcopy=False):
        rows.append({"trial": trial.number, "state": trial.state.name, "score": trial.value,
                     "epochs": trial.user_attrs.get("epochs", len(trial.intermediate_values)),
                     "minutes": trial.user_attrs.get("wall_time_s", 0.0) / 60, **trial.params})
    return settings, study, pd.DataFrame(rows)


def flips_text(flips: dict | None) -> str:
    if not flips:
        return "plain (decided before flip policies were saved)"
    policy = FlipPolicy(horizontal=flips.get("horizontal", True), pairs=flips.get("pairs", []))
    return f"{policy.describe()} (from {flips.get('source', 'default')})"


def summary_section(settings, trials: pd.DataFrame) -> str:
    states = trials["state"].value_counts().to_dict() if len(trials) else {}
    fidelity = settings.space.get("fidelity", {})
    decisions = settings.decisions or {}
    min_steps = ("a searched number of" if "train.min_steps_per_epoch" in settings.space.get("params", {}) else
                 settings.space.get("fixed", {}).get("train.min_steps_per_epoch", MIN_STEPS_PER_EPOCH))
    items = {
        "dataset": settings.dataset, "task": settings.task, "metric": settings.metric,
        "search space": settings.space.get("name"), "searched": ", ".join(settings.space.get("params", {})),
        "budget": f"{settings.trials} trials, up to {fidelity.get('max_epochs')} epochs "
                  f"(an epoch: at least {min_steps} optimizer steps), "
                  f"{fidelity.get('subsample', 1):.0%} of the training groups",
        "input channels": decisions.get("in_channels", 3),
        "horizontal flips": flips_text(decisions.get("flips")),
        "excluded images": f"{len(decisions.get('excluded', []))} (the dataset.yaml's `exclude` list)",
        "trial compute": f"{trials['minutes'].sum():.1f} min" if len(trials) else "-",
        "trials by state": ", ".join(f"{k.lower()} {v}" for k, v in states.items()) or "none yet",
        "created": settings.created,
    }
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items.items())
    return section("summary", "Summary", f"<table>{rows}</table>")


def leaderboard_section(trials: pd.DataFrame, note: str | None = None) -> str:
    if trials.empty:
        return section("leaderboard", "Leaderboard", empty("No trial yet: run automl search."))
    order = trials.assign(rank_state=trials["state"].map({"COMPLETE": 0, "PRUNED": 1}).fillna(2))
    order = order.sort_values(["rank_state", "score"], ascending=[True, False]).drop(columns="rank_state")
    order = order.rename(columns=lambda c: c.split(".")[-1] if c.startswith(("loss.", "optim.", "model.", "data.",
                                                                              "schedule.")) else c)
    return section("leaderboard", "Leaderboard", (f"<p class='warn'>{html.escape(note)}</p>" if note else "")
                   + table(order.head(25)))


def history_section(trials: pd.DataFrame, metric: str) -> str:
    done = trials.dropna(subset=["score"])
    if done.empty:
        return section("history", "Optimization history", empty("No scored trial yet."))
    figure, axis = plt.subplots(figsize=(8, 3.2))
    for state, group in done.groupby("state"):
        axis.scatter(group["trial"], group["score"], s=22, label=state.lower(), color=STATE_COLOURS.get(state, "#555"))
    complete = done[done["state"] == "COMPLETE"].sort_values("trial")
    if len(complete):
        axis.step(complete["trial"], complete["score"].cummax(), where="post", color="#222", label="best so far")
    axis.set_xlabel("trial")
    axis.set_ylabel(metric)
    axis.legend(fontsize=8)
    return section("history", "Optimization history", f'<img src="{figure_uri(figure)}" alt="history">')


def importance_section(study) -> str:
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 3:
        return section("importance", "Hyperparameter importances",
                       empty(f"Needs at least 3 COMPLETE trials; the study has {len(complete)}."))
    try:
        importances = optuna.importance.get_param_importances(study)
    except Exception as e:  # e.g. every COMPLETE trial with the same parameters
        return section("importance", "Hyperparameter importances", empty(f"Not computable: {e}"))
    figure, axis = plt.subplots(figsize=(7, 0.4 * len(importances) + 1))
    names = list(importances)[::-1]
    axis.barh(names, [importances[n] for n in names], color="#1971c2")
    axis.set_xlabel("importance (fANOVA)")
    return section("importance", "Hyperparameter importances", f'<img src="{figure_uri(figure)}" alt="importance">')


def rungs_section(trials: pd.DataFrame, max_epochs: int) -> str:
    if trials.empty:
        return section("rungs", "Epochs reached per trial (ASHA rungs)", empty("No trial yet."))
    figure, axis = plt.subplots(figsize=(8, 3))
    axis.bar(trials["trial"], trials["epochs"], color=[STATE_COLOURS.get(s, "#555") for s in trials["state"]])
    axis.axhline(max_epochs, color="#222", linestyle=":", linewidth=1)
    axis.set_xlabel("trial")
    axis.set_ylabel("epochs run")
    note = '<p class="muted">green: complete, orange: pruned by ASHA, red: failed; dotted: max_epochs.</p>'
    return section("rungs", "Epochs reached per trial (ASHA rungs)", f'<img src="{figure_uri(figure)}">{note}')


def parallel_section(trials: pd.DataFrame, params: list[str], metric: str) -> str:
    done = trials.dropna(subset=["score"])
    numeric = [p for p in params if p in done and pd.api.types.is_numeric_dtype(done[p])]
    if done.empty or not numeric:
        return section("parallel", "Parallel coordinates", empty("No scored trial with numeric parameters yet."))
    columns = numeric + ["score"]
    values = done[columns].astype(float)
    span = (values.max() - values.min()).replace(0, 1)
    scaled = (values - values.min()) / span
    figure, axis = plt.subplots(figsize=(9, 3.5))
    colours = plt.cm.viridis(scaled["score"].to_numpy())
    for row, colour in zip(scaled.to_numpy(), colours):
        axis.plot(range(len(columns)), row, color=colour, alpha=0.8)
    axis.set_xticks(range(len(columns)), [c.split(".")[-1] for c in numeric] + [metric], rotation=20)
    axis.set_yticks([])
    return section("parallel", "Parallel coordinates", f'<img src="{figure_uri(figure)}" alt="parallel">'
                   '<p class="muted">each line a trial, every axis scaled to its range; colour: score.</p>')


def loss_weight_section(trials: pd.DataFrame, metric: str) -> str:
    weights = [c for c in trials.columns if c.startswith("loss.terms.")]
    done = trials.dropna(subset=["score"])
    if len(weights) < 2 or done.empty:
        return section("loss-weights", "Loss weights", empty("Not a hybrid-loss study (fewer than 2 loss weights searched)."))
    x, y = ("loss.terms.ce", "loss.terms.dice") if {"loss.terms.ce", "loss.terms.dice"} <= set(weights) else weights[:2]
    figure, axis = plt.subplots(figsize=(5, 4))
    points = axis.scatter(done[x], done[y], c=done["score"], cmap="viridis", s=40)
    figure.colorbar(points, label=metric)
    axis.set_xlabel(x.split(".")[-1] + " weight")
    axis.set_ylabel(y.split(".")[-1] + " weight")
    return section("loss-weights", "Loss weights", f'<img src="{figure_uri(figure)}" alt="loss weights">')


def folds_section(root: Path, ensemble: EnsembleResult | None = None) -> str:
    rows = []
    for done in sorted(root.glob("promoted/*/fold*/done.json")):
        fold = FoldResult.model_validate(store.read_json(done))
        rows.append({"model": fold.model, "fold": fold.fold, "score": fold.score,
                     "scored with": "final epoch" if fold.checkpoint == "final.pt" else "best epoch",
                     "best epoch on validation": fold.best_epoch, "images": len(fold.ids)})
    if not rows:
        return section("folds", "Promoted models", empty("No promote run yet: run automl promote."))
    frame = pd.DataFrame(rows)
    means = frame.groupby("model")["score"].agg(["mean", "std", "count"]).reset_index()
    refits = [RefitResult.model_validate(store.read_json(done))
              for done in sorted(root.glob("promoted/*/full/done.json"))]
    refit = ""
    if refits:
        members = set(ensemble.members) if ensemble else set()
        used = ("what predict uses by default" if members and members <= {r.model for r in refits}
                else "predict uses the fold models until every ensemble member is refit")
        refit = (f"<h3>refit on every training image ({used}; no held-out score)</h3>"
                 + table(pd.DataFrame([r.model_dump(exclude={"config"}) for r in refits])))
    return section("folds", "Promoted models: fold scores", table(frame) + "<h3>per model</h3>" + table(means)
                   + refit)


def ensemble_section(ensemble: EnsembleResult | None, metric: str,
                     missing: str = "No ensemble yet: run automl ensemble.") -> str:
    if ensemble is None:
        return section("ensemble", "Ensemble", empty(missing))
    members = pd.DataFrame({"member": ensemble.members, "weight": ensemble.weights})
    baselines = {"ensemble": ensemble.score, "best single": ensemble.best_single, "uniform": ensemble.uniform,
                 "hard vote": ensemble.hard_vote, "70% vote": ensemble.vote_70}
    figure, axis = plt.subplots(figsize=(6, 2.6))
    names = [k for k, v in baselines.items() if v is not None]
    axis.barh(names[::-1], [baselines[n] for n in names[::-1]], color=["#1971c2"] * (len(names) - 1) + ["#2b8a3e"])
    low = min(baselines[n] for n in names)
    axis.set_xlim(max(0.0, low - 0.1), 1.0)
    axis.set_xlabel(f"OOF {metric}")
    gain = ensemble.score - ensemble.best_single
    protocol = ("cross-validated over the promote folds: each fold scored by weights, thresholds and "
                "postprocessing chosen on the others; every baseline tuned the same way; "
                f"{ensemble.score_in_sample:.4f} in sample")
    fallback = ("<p>The selected ensemble did not beat the best single model out of fold: predict uses that "
                "model alone.</p>" if ensemble.fell_back_to_best_single else "")
    notes = (f"<p>OOF {metric} {ensemble.score:.4f} ({protocol}): {gain:+.4f} over the best single model, "
             f"{ensemble.score - ensemble.uniform:+.4f} over the uniform average, "
             f"{ensemble.score - ensemble.hard_vote:+.4f} over the hard vote.</p>{fallback}")
    extra = ""
    if ensemble.thresholds:
        extra += f"<p>thresholds per class: {', '.join(f'{t:.2f}' for t in ensemble.thresholds)}</p>"
    if ensemble.postprocess:
        switched_on = {k: [i for i, on in enumerate(v) if on] for k, v in ensemble.postprocess.items()}
        extra += f"<p>postprocessing switched on (class indices): {html.escape(json.dumps(switched_on))}</p>"
    return section("ensemble", "Ensemble", notes + table(members) + f'<img src="{figure_uri(figure)}">' + extra)


def per_class_section(ensemble: EnsembleResult | None, metric: str) -> str:
    if ensemble is None:
        return section("per-class", f"Per-class {metric}", empty("No ensemble yet: run automl ensemble."))
    names = ensemble.class_names or [str(i) for i in range(len(ensemble.per_class))]
    frame = pd.DataFrame({"class": names, f"OOF {metric}": ensemble.per_class})
    return section("per-class", f"Per-class {metric}", table(frame))


def worst_section(root: Path, ensemble: EnsembleResult | None) -> str:
    worst = ensemble.worst if ensemble else []
    if not worst:
        return section("worst", "Worst out-of-fold images", empty("No ensemble yet: run automl ensemble."))
    scores = {}
    per_image = root / "ensemble_per_image.csv"
    if per_image.exists():
        scores = dict(pd.read_csv(per_image).itertuples(index=False, name=None))
    figures = "".join(f'<figure><img src="{file_uri(root / item["file"])}" alt="{html.escape(item["id"])}">'
                      f'<figcaption>{html.escape(item["id"])} · OOF {scores.get(item["id"], float("nan")):.4f}'
                      f'</figcaption></figure>' for item in worst if (root / item["file"]).exists())
    return section("worst", "Worst out-of-fold images (label-noise review)",
                   '<p class="muted">image | label | ensemble prediction (out-of-fold)</p>' + figures)


def audit_section(dataset_yaml: str) -> str:
    audit = Path(dataset_yaml).with_name("audit.csv")
    if not audit.exists():
        return section("audit", "Audit flags", empty("No audit yet: run automl data audit."))
    flags = pd.read_csv(audit)
    if flags.empty:
        return section("audit", "Audit flags", "<p>The audit flagged nothing.</p>")
    counts = flags["reason"].value_counts().rename_axis("reason").reset_index(name="images")
    return section("audit", "Audit flags", table(counts) + table(flags.head(30)))


def build_report(runs_dir: str | Path, study_name: str) -> Path:
    run = store.RunDir(runs_dir, study_name)
    settings, study, trials = load_trials(runs_dir, study_name)
    ensemble_file = run.root / "ensemble.json"
    ensemble, ensemble_missing = None, "No ensemble yet: run automl ensemble."
    try:
        ensemble = EnsembleResult.load(ensemble_file) if ensemble_file.exists() else None
    except UserError as e:  # written by an older version: the rest of the report still stands
        ensemble_missing = e.line()
    params = list(settings.space.get("params", {}))
    max_epochs = int(settings.space.get("fidelity", {}).get("max_epochs", 0))
    body = "".join([
        summary_section(settings, trials), leaderboard_section(trials, unlearned_classes_note(run, settings)), history_section(trials, settings.metric),
        importance_section(study), rungs_section(trials, max_epochs),
        parallel_section(trials, params, settings.metric), loss_weight_section(trials, settings.metric),
        folds_section(run.root, ensemble), ensemble_section(ensemble, settings.metric, ensemble_missing),
        per_class_section(ensemble, settings.metric), worst_section(run.root, ensemble),
        audit_section(settings.dataset),
    ])
    nav = " · ".join(f'<a href="#{s}">{s}</a>' for s in SECTIONS)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(study_name)} report</title>"
            f"<style>{STYLE}</style></head><body><h1>Study {html.escape(study_name)}</h1>"
            f"<p class='muted'>{nav}</p>{body}</body></html>")
    out = run.root / "report" / "index.html"
    store.write_text(out, page)
    return out
