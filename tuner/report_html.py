"""report/index.html: the human view of a search experiment, with the plots researchers read.

Written by `tuner.results.build_report` into the same temporary folder as the CONTRACT files
(so it appears together with them, or not at all), from the same plain files: the journal,
the trial folders, `best_test.json` with the per-sample predictions and attention the search
stored when it scored the test split once, and the Optuna study (`optuna.journal`, opened
read-only). Nothing here trains or scores a model.

The page is plain HTML with inline CSS and no script; its figures are PNG files in
`report/figures/`, so it opens from disk, offline, in any browser. Every figure is drawn by
matplotlib, Optuna's own matplotlib visualisations or `timesclip.plots`, and carries a
caption naming the data and backbone it came from (in the page and in the PNG itself).

A figure that cannot be drawn (too few trials, no variate selection, an interrupted search)
gets a short note in its place; a figure that fails unexpectedly gets a note too, plus a
line in the report's notes, and never costs the CONTRACT files.
"""

from __future__ import annotations

import html
import json
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from timesclip.config import ABLATIONS
from timesclip.plots import (
    plot_attention,
    plot_predicted_vs_actual,
    read_attention,
    read_predictions,
    save_figure,
    stamp,
)
from tuner.journal import (
    BEST_TEST_FILE,
    JOURNAL_FILE,
    OPTUNA_JOURNAL,
    TERMINATED,
    ExperimentState,
    as_float,
    read_events,
)
from tuner.journal import select_best as select_best_trial
from tuner.results import METRICS, REFERENCE_ROWS, fmt

INDEX_FILE = "index.html"
FIGURES_DIR = "figures"
#: How many of the best trials the learning-curve figure draws.
TOP_CURVES = 8
#: fANOVA is a random forest: a fixed seed keeps the page the same on every rebuild.
IMPORTANCE_SEED = 0
_METRIC_LABEL = {"val_rmse": "validation RMSE", "val_mae": "validation MAE",
                 "val_r2": "validation R²", "val_mape": "validation MAPE %",
                 "val_loss": "validation loss"}
_FADED = ("asha", "diverged", "error", "unfinished", "no_results")


@dataclass
class Section:
    """One block of the page: a figure (path relative to report/) or a note, and a caption."""

    key: str
    title: str
    figure: str | None = None
    caption: str = ""
    note: str = ""
    html: str = ""


# ---------------------------------------------------------------------------- figure data
def search_history(events: Sequence[dict[str, Any]], state: ExperimentState,
                   metric: str = "val_rmse", mode: str = "min") -> pd.DataFrame:
    """One row per journaled epoch result, in journal order (the order Ray delivered them).

    Columns: step (cumulative trial-epochs: 1, 2, ...), trial_id, epoch, value (the search
    metric), decision (the scheduler's), asha_stop (this result is where ASHA stopped the
    trial), best_so_far (best value over all results up to this step). An epoch reported
    again after a retry is a second point: that compute was spent twice. Divergence
    reports carry no metrics and are not points.
    """
    rows: list[dict[str, Any]] = []
    for ev in events:
        if ev.get("ev") != "result" or ev.get("diverged"):
            continue
        trial = state.trials.get(str(ev.get("tid")))
        if trial is None:
            continue
        decision = str(ev.get("decision", "continue"))
        rows.append({"step": len(rows) + 1, "trial_id": trial.tid, "epoch": int(ev["epoch"]),
                     "value": _num((ev.get("metrics") or {}).get(metric)),
                     "decision": decision,
                     "asha_stop": decision == "stop" and trial.stopped_by == "asha"})
    frame = pd.DataFrame(rows, columns=["step", "trial_id", "epoch", "value", "decision",
                                        "asha_stop"])
    values = frame["value"].astype(float)
    running = values.cummin() if mode == "min" else values.cummax()
    frame["best_so_far"] = running.ffill()
    return frame


def learning_curves(state: ExperimentState, trials: pd.DataFrame, metric: str = "val_rmse",
                    top: int = TOP_CURVES) -> list[tuple[str, str, pd.DataFrame]]:
    """(trial id, how it ended, per-epoch values) of the first `top` trials of the trials
    table (best first) that reported at least one epoch."""
    out = []
    for tid in trials["trial_id"].astype(str):
        trial = state.trials.get(tid)
        if trial is None or not trial.history:
            continue
        epochs = sorted(trial.history)
        curve = pd.DataFrame({"epoch": epochs,
                              "value": [_num(trial.history[e].get(metric)) for e in epochs]})
        out.append((tid, trial.stopped_by, curve))
        if len(out) >= top:
            break
    return out


@dataclass
class StudyView:
    """What the Optuna figures need from a stored study."""

    study: Any  # optuna.Study, opened read-only
    complete: int  # COMPLETE trials (the ones Optuna's importance and plots use)
    pruned: int
    varying: list[str]  # parameters in every COMPLETE trial whose value differs between them


def open_study(path: Path, study_name: str) -> StudyView:
    """The experiment's Optuna study from its file, opened read-only (a copied or
    write-protected experiment folder works, and the report can never alter the study)."""
    from optuna.search_space import intersection_search_space
    from optuna.trial import TrialState as OptunaState

    from tuner.study import open_stored_study

    study = open_stored_study(path, study_name)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == OptunaState.COMPLETE]
    common = intersection_search_space(complete) if complete else {}
    varying = [name for name in sorted(common)
               if len({json.dumps(t.params[name]) for t in complete}) > 1]
    return StudyView(study=study, complete=len(complete),
                     pruned=sum(1 for t in trials if t.state == OptunaState.PRUNED),
                     varying=varying)


def param_importances(view: StudyView) -> dict[str, float]:
    """Optuna's fANOVA importances (seeded) of the varying parameters; they sum to 1."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator

    return optuna.importance.get_param_importances(
        view.study, evaluator=FanovaImportanceEvaluator(seed=IMPORTANCE_SEED),
        params=view.varying)


def _computed(values: dict[str, float]) -> Any:
    """An Optuna importance evaluator that hands back importances already computed (by
    `param_importances`), so the figure shows the table's numbers without a second fANOVA
    fit. Optuna's plot calls `evaluate` with the same study and parameters."""
    from optuna.importance import BaseImportanceEvaluator

    class Computed(BaseImportanceEvaluator):
        def evaluate(self, study: Any, params: Any = None, *, target: Any = None
                     ) -> dict[str, float]:
            return dict(values)

    return Computed()


def importance_reason(view: StudyView) -> str | None:
    """Why importances cannot be computed, or None when they can."""
    if view.complete < 2:
        return (f"parameter importance needs at least 2 COMPLETE trials in the Optuna study; "
                f"it holds {view.complete} (and {view.pruned} PRUNED: stopped by ASHA or "
                "diverged)")
    if not view.varying:
        return ("parameter importance needs at least one parameter that every COMPLETE "
                "trial sampled and whose value differs between them; there is none")
    return None


# ---------------------------------------------------------------------------- drawing
def _pyplot() -> Any:
    """pyplot for Optuna's matplotlib plots, on the non-interactive Agg backend unless the
    process already chose one (a report is written by a search driver or a CLI, never
    shown on screen)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_search_history(frame: pd.DataFrame, *, metric: str, caption: str) -> Figure:
    """Every result against cumulative trial-epochs; ASHA stops as red crosses; best so far."""
    import matplotlib

    fig = Figure(figsize=(9.5, 5.0), layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab20"]
    finite = frame[np.isfinite(frame["value"].astype(float))]
    for i, (tid, group) in enumerate(finite.groupby("trial_id", sort=False)):
        color = cmap(i % 20)
        ax.plot(group["step"], group["value"], "-", color=color, alpha=0.35, lw=0.9)
        ax.scatter(group["step"], group["value"], s=16, color=color, zorder=2)
        if finite["trial_id"].nunique() <= 20:
            last = group.iloc[-1]
            ax.annotate(str(tid), (last["step"], last["value"]), fontsize=6, color=color,
                        xytext=(3, 3), textcoords="offset points")
    stops = finite[finite["asha_stop"]]
    if len(stops):
        ax.scatter(stops["step"], stops["value"], marker="x", s=70, color="#d62728", zorder=3,
                   label=f"stopped by ASHA ({len(stops)})")
    ax.step(frame["step"], frame["best_so_far"], where="post", color="black", lw=1.6,
            label="best so far")
    values = finite["value"].astype(float)
    if len(values) and values.min() > 0 and values.max() / values.min() > 20:
        ax.set_yscale("log")
    ax.set_xlabel("cumulative trial-epochs (results in the order the journal recorded them)")
    ax.set_ylabel(_METRIC_LABEL.get(metric, metric))
    ax.set_title(f"Search history: {len(frame)} epoch results from "
                 f"{frame['trial_id'].nunique()} trials", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    stamp(fig, caption)
    return fig


def plot_learning_curves(curves: list[tuple[str, str, pd.DataFrame]], *, metric: str,
                         best_id: str | None, caption: str) -> Figure:
    """Validation metric per epoch of the top trials; stopped or failed ones faded."""
    fig = Figure(figsize=(9.5, 5.0), layout="constrained")
    ax = fig.subplots()
    for tid, ended, curve in curves:
        faded = ended in _FADED
        label = f"{tid} ({ended.replace('_', ' ')})" + (", exported" if tid == best_id else "")
        ax.plot(curve["epoch"], curve["value"], marker="o", ms=3,
                lw=2.6 if tid == best_id else 1.3, ls="--" if faded else "-",
                alpha=0.35 if faded else 0.95, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(_METRIC_LABEL.get(metric, metric))
    ax.set_title(f"Learning curves of the {len(curves)} best trials (faded, dashed: stopped "
                 "by ASHA, diverged, failed or unfinished)", fontsize=10)
    epochs = sorted({int(e) for _, _, c in curves for e in c["epoch"]})
    if epochs and len(epochs) <= 30:
        ax.set_xticks(epochs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right", ncol=2 if len(curves) > 4 else 1)
    stamp(fig, caption)
    return fig


def _optuna_figure(draw: Callable[[], Any], caption: str, size: tuple[float, float]
                   ) -> Any:
    """Run one of Optuna's matplotlib plots (experimental: its warning is silenced) and
    return its figure, sized and stamped."""
    import optuna

    _pyplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = draw()
    first = np.ravel(np.asarray(axes, dtype=object))[0]
    fig = first.figure
    fig.set_size_inches(*size)
    stamp(fig, caption)
    return fig


def plot_ablation(table: pd.DataFrame, *, caption: str) -> Figure:
    """E1–E5 as bars (mean ± std over seeds) for test RMSE and R², references as lines."""
    import matplotlib

    arms = table[table["kind"] == "arm"]
    refs = table[table["kind"] == "reference"]
    fig = Figure(figsize=(11.0, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    colors = matplotlib.colormaps["tab10"]
    styles = {"mean": ":", "ridge": "--", "hgb": "-."}
    for ax, metric, label in ((axes[0], "rmse", "test RMSE (lower is better)"),
                              (axes[1], "r2", "test R² (higher is better)")):
        means = arms[f"test_{metric}_mean"].astype(float).to_numpy()
        stds = np.nan_to_num(arms[f"test_{metric}_std"].astype(float).to_numpy())
        x = np.arange(len(arms))
        ax.bar(x, np.nan_to_num(means), yerr=stds, capsize=4, color="#4c72b0", alpha=0.85,
               label="arm: mean ± std over seeds")
        ax.set_xticks(x, labels=[f"{r}\n(n={n})" for r, n in zip(arms["row"], arms["n"])])
        for i, (_, ref) in enumerate(refs.iterrows()):
            value = float(ref[f"test_{metric}_mean"])
            if math.isfinite(value):
                ax.axhline(value, color=colors(i + 1), ls=styles.get(str(ref["row"]), "-"),
                           lw=1.4, label=f"{ref['row']} ({fmt(value)})")
        if metric == "r2":
            ax.axhline(0.0, color="#888888", lw=0.8)
        ax.set_ylabel(label)
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7, loc="best")
        ax.grid(axis="y", alpha=0.3)
    stamp(fig, caption)
    return fig


# ---------------------------------------------------------------------------- the page
def provenance(meta: dict[str, Any]) -> str:
    """One line: which data and which backbone produced the numbers."""
    data = meta.get("data") or {}
    backbone = str(meta.get("backbone", "?"))
    kind = "SYNTHETIC data" if data.get("synthetic") else "data"
    bb = ("backbone tiny (random toy weights, NOT pretrained CLIP)" if backbone == "tiny"
          else f"backbone {backbone}")
    return f"{kind}: {data.get('description', '?')} · {bb}"


def write_html_report(directory: Path, *, experiment_dir: Path, meta: dict[str, Any],
                      state: ExperimentState, trials: pd.DataFrame,
                      best: dict[str, Any] | None, best_test: dict[str, Any] | None,
                      references: list[Any] | None, ablation: pd.DataFrame | None,
                      notes: list[str], progress: dict[str, Any]) -> Path:
    """Write index.html and figures/*.png into `directory` (the report's temporary folder).

    `notes` is the report's notes list: a figure that failed to draw adds a line to it.
    Returns the path of index.html.
    """
    figures = directory / FIGURES_DIR
    figures.mkdir(parents=True, exist_ok=True)
    kind = str(meta.get("kind", "search"))
    metric = str(meta.get("metric", "val_rmse"))
    mode = str(meta.get("mode", "min"))
    where = provenance(meta)
    finished = bool(progress.get("finished", True))
    sections: list[Section] = []

    def figure(key: str, title: str, caption: str, draw: Callable[[], Any],
               extra_html: str = "") -> Section:
        """Draw, save and describe one figure; a failure becomes a note, never a crash."""
        import matplotlib

        try:
            # Optuna's plots switch pyplot's global style: keep that inside this figure
            with matplotlib.rc_context():
                fig = draw()
                try:
                    path = save_figure(fig, figures / f"{key}.png")
                finally:  # Optuna draws through pyplot, which keeps its figures until closed
                    if "matplotlib.pyplot" in sys.modules:
                        sys.modules["matplotlib.pyplot"].close(fig)
            return Section(key, title, figure=f"{FIGURES_DIR}/{path.name}",
                           caption=f"{caption} {where}.", html=extra_html)
        except Exception as exc:  # a plot bug must not cost the tables
            line = f"{title}: figure not drawn ({type(exc).__name__}: {_short(exc)})"
            notes.append(f"index.html: {line}")
            return Section(key, title, note=line)

    # -- search history and learning curves: every kind of experiment
    events = read_events(experiment_dir / JOURNAL_FILE)
    history = search_history(events, state, metric, mode)
    if kind == "ablation":  # the arms' comparison first, right under the table
        sections += _ablation_sections(ablation, figure, where)
    if len(history):
        n_stops = int(history["asha_stop"].sum())
        stops = (f" Red crosses: the {n_stops} results at which ASHA stopped a trial."
                 if n_stops else "")
        sections.append(figure(
            "search_history", "Search history",
            f"Each point is one epoch of one trial ({metric}, validation split), in the "
            f"order the journal recorded it; x counts trial-epochs spent so far.{stops} "
            "Black line: best value reported so far by any trial.",
            lambda: plot_search_history(history, metric=metric, caption=where)))
        best_id = best["trial_id"] if best else None
        curves = learning_curves(state, trials, metric)
        thick = "; thick: the exported configuration" if best_id else ""
        sections.append(figure(
            "learning_curves", "Learning curves",
            f"{metric} per epoch of the {len(curves)} best trials by validation value "
            "(the trials table's order); dashed and faded: stopped by ASHA, diverged, "
            f"failed or unfinished{thick}.",
            lambda: plot_learning_curves(curves, metric=metric, best_id=best_id,
                                         caption=where)))
    else:
        sections.append(Section("search_history", "Search history",
                                note="No epoch has been reported yet."))

    if kind != "ablation":
        sections += _optuna_sections(experiment_dir, meta, figure, where)
        sections += _test_sections(experiment_dir, best, best_test, finished, figure, where)

    page = _page(meta, kind=kind, state=state, trials=trials, best=best, best_test=best_test,
                 references=references, ablation=ablation, notes=notes, progress=progress,
                 sections=sections, metric=metric, mode=mode)
    index = directory / INDEX_FILE
    index.write_text(page, encoding="utf-8")
    return index


FigureFn = Callable[..., Section]


def _optuna_sections(experiment_dir: Path, meta: dict[str, Any], figure: FigureFn,
                     where: str) -> list[Section]:
    from tuner.study import find_study

    db = find_study(experiment_dir)
    titles = ("Parameter importance", "Parameters against the result")
    if db is None:
        note = f"No {OPTUNA_JOURNAL} in the experiment folder: no Optuna study to read."
        return [Section("importance", titles[0], note=note)]
    try:
        view = open_study(db, str(meta.get("name")))
    except Exception as exc:
        note = f"The Optuna study could not be read ({type(exc).__name__}: {_short(exc)})."
        return [Section("importance", titles[0], note=note)]
    _pyplot()  # before Optuna's matplotlib module imports pyplot
    import optuna.visualization.matplotlib as ovm
    from optuna.importance import FanovaImportanceEvaluator

    target = f"best {meta.get('metric', 'val_rmse')}"
    reason = importance_reason(view)
    if reason is not None:
        return [Section("importance", titles[0], note=reason + ".")]
    base = (f"From the Optuna study ({view.complete} COMPLETE trials; the {view.pruned} "
            "PRUNED ones, stopped by ASHA or diverged, are left out as Optuna leaves them "
            f"out), value = each trial's {target} on the validation split.")
    evaluator: Any = FanovaImportanceEvaluator(seed=IMPORTANCE_SEED)
    try:
        values = param_importances(view)
        table = "<table class='small'><tr><th>parameter</th><th>importance</th></tr>" + "".join(
            f"<tr><td>{_e(k)}</td><td>{v:.3f}</td></tr>" for k, v in values.items()) + \
            "</table>"
        evaluator = _computed(values)  # the figure draws these: fANOVA is fitted once
    except Exception as exc:
        table = f"<p class='note'>importances not computed: {_e(_short(exc))}</p>"
    out = [figure(
        "param_importance", titles[0],
        f"fANOVA importance (Optuna's FanovaImportanceEvaluator, seed {IMPORTANCE_SEED}) of "
        f"the parameters that vary across trials. {base}",
        lambda: _optuna_figure(lambda: ovm.plot_param_importances(
            view.study, evaluator=evaluator, params=view.varying, target_name=target),
            where, (8.0, 4.2)),
        extra_html=table)]
    if len(view.varying) >= 2:
        out.append(figure(
            "parallel_coordinates", titles[1],
            f"Parallel coordinates (Optuna's plot_parallel_coordinate): one line per trial "
            f"across the varying parameters, coloured by {target}. {base}",
            lambda: _optuna_figure(lambda: ovm.plot_parallel_coordinate(
                view.study, params=view.varying, target_name=target), where, (10.0, 5.0))))
    else:
        out.append(figure(
            "slice", titles[1],
            f"Slice plot (Optuna's plot_slice): {target} against the one varying parameter. "
            f"{base}",
            lambda: _optuna_figure(lambda: ovm.plot_slice(
                view.study, params=view.varying, target_name=target), where, (7.0, 4.5))))
    return out


def _test_sections(experiment_dir: Path, best: dict[str, Any] | None,
                   best_test: dict[str, Any] | None, finished: bool, figure: FigureFn,
                   where: str) -> list[Section]:
    titles = ("Predicted vs actual (test split)", "Variate-selection attention")
    if not finished:
        note = ("The search is interrupted: no configuration is exported and the test split "
                "is not touched until every trial has finished.")
        return [Section("predictions", titles[0], note=note)]
    if best_test is None or best is None:
        note = ("The test split was not scored (no exported configuration or no "
                f"{BEST_TEST_FILE}).")
        return [Section("predictions", titles[0], note=note)]
    if str(best_test.get("trial_id")) != best["trial_id"]:
        note = (f"{BEST_TEST_FILE} holds trial {best_test.get('trial_id')}, not the exported "
                f"{best['trial_id']}: its predictions are not shown.")
        return [Section("predictions", titles[0], note=note)]
    tid = best["trial_id"]
    out: list[Section] = []
    frame, missing = _stored(experiment_dir, best_test.get("predictions"), read_predictions,
                             "predictions", titles[0],
                             "No per-sample test predictions were stored with "
                             "best_test.json (an experiment scored by an older version); "
                             "the test metrics above still hold.")
    if missing is not None:
        out.append(missing)
    else:
        name = best_test["predictions"]
        years = sorted(int(y) for y in frame["year"].unique())
        by_year = (f" Right: residuals per year ({', '.join(map(str, years))})."
                   if len(years) > 1 else f" The test split holds one year ({years[0]}): "
                   "no residuals-by-year panel.")
        out.append(figure(
            "predicted_vs_actual", titles[0],
            f"Exported configuration (trial {tid}) on the {len(frame)} test samples, scored "
            f"once when the search finished ({Path(name).name}).{by_year}",
            lambda: plot_predicted_vs_actual(frame, caption=where,
                                             title=f"Trial {tid} on the test split")))
    if best_test.get("use_variate_selection") is False:
        out.append(Section("attention", titles[1], note=(
            "The exported configuration has no variate selection (use_variate_selection: "
            "false): there is no band-to-band attention to show.")))
        return out
    matrix, missing = _stored(experiment_dir, best_test.get("attention"), read_attention,
                              "attention", titles[1],
                              "No attention matrix was stored with best_test.json (an "
                              "experiment scored by an older version).")
    if missing is not None:
        out.append(missing)
    else:
        name = best_test["attention"]
        out.append(figure(
            "attention", titles[1],
            f"Band-to-band attention of the exported model's variate selection (trial {tid}),"
            f" averaged over the test split ({Path(name).name}); row = attending band, each "
            "row sums to 1.",
            lambda: plot_attention(matrix, caption=where,
                                   title=f"Variate-selection attention, trial {tid}, mean "
                                         "over the test split")))
    return out


def _stored(experiment_dir: Path, name: Any, reader: Callable[[Path], Any], key: str,
            title: str, absent: str) -> tuple[Any, Section | None]:
    """(what `reader` reads from a file named in best_test.json, None), or (None, a note
    saying the file is absent or unreadable): one missing figure never hides another."""
    path = experiment_dir / str(name) if name else None
    if path is None or not path.is_file():
        return None, Section(key, title, note=absent)
    try:
        return reader(path), None
    except (OSError, ValueError) as exc:
        return None, Section(key, title, note=f"{path.name} is unreadable: {_short(exc)}")


def _ablation_sections(ablation: pd.DataFrame | None, figure: FigureFn, where: str
                       ) -> list[Section]:
    title = "Ablation: test metrics per arm"
    if ablation is None or not len(ablation):
        return [Section("ablation", title, note="No ablation table.")]
    arms = ablation[ablation["kind"] == "arm"]
    if not np.isfinite(arms["test_rmse_mean"].astype(float)).any():
        return [Section("ablation", title, note="No arm has test metrics yet.")]
    return [figure(
        "ablation", title,
        "E1–E5 (see the table above): bars are the mean over finished seeds, error bars the "
        "sample standard deviation (none when n = 1), on the test split; horizontal lines: "
        "the reference predictors fitted on the same train split and scored on the same "
        "test split.",
        lambda: plot_ablation(ablation, caption=where))]


# ---------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1f;
background:#fafafa;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:18px 24px 48px}
h1{font-size:1.6em;margin:0.2em 0}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid
#ddd;padding-bottom:4px}
.banner{padding:10px 14px;border-radius:6px;margin:10px 0;font-size:0.95em}
.warn{background:#fff4d6;border:1px solid #e0b84c}.alert{background:#fde2e1;border:1px solid
#d9534f}.info{background:#e8f1fb;border:1px solid #8fb3dc}
table{border-collapse:collapse;margin:8px 0;font-size:0.88em;background:#fff}
th,td{border:1px solid #d6d6d6;padding:4px 8px;text-align:right}th{background:#f0f0f0}
td.l,th.l{text-align:left}tr.ours td{font-weight:600;background:#f3f8ee}
table.small{font-size:0.82em}
figure{margin:12px 0;background:#fff;border:1px solid #e3e3e3;padding:10px;border-radius:6px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:0.85em;color:#444;margin-top:6px}
.note{color:#555;font-style:italic}.mono{font-family:ui-monospace,Menlo,Consolas,monospace;
font-size:0.9em}
.scroll{overflow-x:auto}
"""


def _page(meta: dict[str, Any], *, kind: str, state: ExperimentState, trials: pd.DataFrame,
          best: dict[str, Any] | None, best_test: dict[str, Any] | None,
          references: list[Any] | None, ablation: pd.DataFrame | None, notes: list[str],
          progress: dict[str, Any], sections: list[Section], metric: str, mode: str) -> str:
    name = str(meta.get("name", "?"))
    data = meta.get("data") or {}
    backbone = str(meta.get("backbone", "?"))
    finished = bool(progress.get("finished", True))
    parts = [f"<h1>{'Ablation' if kind == 'ablation' else 'Search'} report: {_e(name)}</h1>",
             f"<p>space <b>{_e(meta.get('space', '?'))}</b> ({_e(kind)}) · "
             f"{_e(meta.get('searcher', '?'))} sampler, {_e(meta.get('scheduler', '?'))} "
             f"scheduler, seed {_e(meta.get('seed', '?'))} · started "
             f"{_e(meta.get('started', '?'))}</p>",
             f"<p><b>{'SYNTHETIC data' if data.get('synthetic') else 'Data'}:</b> "
             f"{_e(data.get('description', '?'))} (fingerprint "
             f"<span class='mono'>{_e(data.get('fingerprint', '?'))}</span>) · "
             f"<b>backbone:</b> <span class='mono'>{_e(backbone)}</span></p>"]
    if backbone == "tiny":
        parts.append("<div class='banner warn'><b>Toy backbone.</b> These numbers come from "
                     "the <span class='mono'>tiny</span> backbone: random, toy-size CLIP "
                     "towers for smoke tests. They say nothing about pretrained CLIP or "
                     "TimesCLIP itself.</div>")
    if data.get("synthetic"):
        parts.append("<div class='banner info'><b>Synthetic data.</b> Every number on this "
                     "page comes from the built-in crop-season simulator, not from real "
                     "yields.</div>")
    if not finished:
        parts.append(f"<div class='banner alert'><b>Interrupted.</b> {progress.get('ended')} "
                     f"of {progress.get('total')} trials finished. This page shows what "
                     "exists so far; no configuration is exported and the test split has not "
                     "been touched. Continue the search with the same command plus "
                     "<span class='mono'>--resume</span>.</div>")

    parts.append("<h2>Headline</h2>")
    if kind == "ablation":
        parts.append(_ablation_html(ablation))
    else:
        parts.append(_headline_html(meta, state, trials, best, best_test, references,
                                    finished, metric, mode))
    for section in sections:
        parts.append(f"<h2 id='{_e(section.key)}'>{_e(section.title)}</h2>")
        if section.figure:
            parts.append(f"<figure><img src='{_e(section.figure)}' alt='{_e(section.title)}'>"
                         f"<figcaption>{_e(section.caption)}</figcaption></figure>")
        if section.note:
            parts.append(f"<p class='note'>{_e(section.note)}</p>")
        if section.html:
            parts.append(section.html)
    parts.append("<h2 id='trials'>Trials</h2>")
    parts.append(_trials_html(trials, meta))
    if notes:
        parts.append("<h2 id='notes'>Notes</h2><ul>" +
                     "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    parts.append("<h2>Elsewhere</h2><ul>"
                 "<li>Tables: <span class='mono'>trials.csv</span>, "
                 "<span class='mono'>trials.parquet</span>, "
                 "<span class='mono'>summary.md</span>"
                 + (", <span class='mono'>ablation.csv</span>, <span class='mono'>"
                    "ablation.md</span>" if kind == "ablation" else
                    ", <span class='mono'>best_config.yaml</span>" if best else "")
                 + " in this folder.</li>"
                 "<li>Every trial's curves and hyperparameters in TensorBoard (HParams tab): "
                 "<span class='mono'>tensorboard --logdir "
                 f"{_e(str(Path('..') / 'trials'))}</span> (run from this folder).</li></ul>")
    parts.append(f"<p class='note'>Generated {_e(_now())} from the experiment's plain files "
                 "(journal, trial folders, best_test.json, optuna.journal read-only).</p>")
    title = f"{name}: {'ablation' if kind == 'ablation' else 'search'} report"
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<link rel='icon' href='data:,'>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
            f"<body><main>{''.join(parts)}</main></body></html>\n")


def _headline_html(meta: dict[str, Any], state: ExperimentState, trials: pd.DataFrame,
                   best: dict[str, Any] | None, best_test: dict[str, Any] | None,
                   references: list[Any] | None, finished: bool, metric: str,
                   mode: str) -> str:
    rows = trials.set_index(trials["trial_id"].astype(str))
    out: list[str] = []
    if not finished:
        leader = select_best_trial(state, metric, mode)
        if leader is None:
            return "<p class='note'>No trial has ended normally with a finite value yet.</p>"
        out.append(f"<p><b>Leading trial so far: {_e(leader.tid)}</b> (validation only; no "
                   "test metrics while the search is interrupted).</p>")
        out.append(_params_html(leader.params))
        out.append(_metrics_table([(f"trial {leader.tid} (validation)",
                                    _val_metrics(rows, leader.tid), None, True)], []))
        return "".join(out)
    if best is None:
        return ("<p class='note'>No configuration was exported: no trial ended normally with "
                f"a finite {_e(metric)} and a stored train_config.yaml.</p>")
    tid = best["trial_id"]
    out.append(f"<p><b>Best configuration: trial {_e(tid)}</b>, {_e(metric)} "
               f"{_e(fmt(best['value']))} at epoch {_e(fmt(best['epoch']))} on the validation "
               "split (chosen on validation only), exported to "
               "<span class='mono'>best_config.yaml</span>.</p>")
    out.append(_params_html(best["record"].params))
    test = None
    if best_test is not None and str(best_test.get("trial_id")) == tid:
        test = best_test.get("test") or {}
    lines: list[tuple[str, dict[str, float], dict[str, float] | None, bool]] = [
        (f"TimesCLIP, trial {tid} (exported)", _val_metrics(rows, tid), test, True)]
    for ref in references or []:
        lines.append((_REF_LABELS.get(ref.name, ref.name), ref.val, ref.test, False))
    out.append(_metrics_table(lines, [f"{r.name}: {r.detail}" for r in references or []]))
    if test is None:
        out.append("<p class='note'>The test split was not scored for this configuration "
                   f"(no matching {BEST_TEST_FILE}).</p>")
    else:
        out.append("<p class='note'>Test metrics: the exported configuration scored once on "
                   "the test split when the search finished; the references are fitted on the "
                   "same train split, tuned on validation and scored on the same test split. "
                   "R² &lt; 0 is worse than predicting the test mean.</p>")
        if not references:
            out.append("<p class='note'>Reference baselines unavailable (see the notes).</p>")
    return "".join(out)


_REF_LABELS = {"mean": "reference: training mean", "ridge": "reference: ridge regression",
               "hgb": "reference: gradient boosting (HistGradientBoostingRegressor)"}


def _val_metrics(rows: pd.DataFrame, tid: str) -> dict[str, float]:
    if tid not in rows.index:
        return {}
    row = rows.loc[tid]
    return {m: _num(row.get(f"best_val_{m}")) for m in METRICS}


def _metrics_table(lines: Sequence[tuple[str, dict[str, float], dict[str, float] | None,
                                         bool]], details: Sequence[str]) -> str:
    head = ("<div class='scroll'><table><tr><th class='l'>model</th><th>val RMSE</th>"
            "<th>val R²</th><th>test RMSE</th><th>test MAE</th><th>test R²</th>"
            "<th>test MAPE %</th></tr>")
    body = []
    for label, val, test, ours in lines:
        test = test or {}
        cells = [fmt(_num(val.get("rmse"))), fmt(_num(val.get("r2")), 3),
                 fmt(_num(test.get("rmse"))), fmt(_num(test.get("mae"))),
                 fmt(_num(test.get("r2")), 3), fmt(_num(test.get("mape")), 3)]
        body.append(f"<tr{' class=ours' if ours else ''}><td class='l'>{_e(label)}</td>"
                    + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    foot = "</table></div>"
    if details:
        foot += "<ul class='small'>" + "".join(f"<li class='note'>{_e(d)}</li>"
                                               for d in details) + "</ul>"
    return head + "".join(body) + foot


def _params_html(params: dict[str, Any]) -> str:
    if not params:
        return ""
    cells = "".join(f"<tr><td class='l mono'>{_e(k)}</td><td class='l'>{_e(fmt(v))}</td></tr>"
                    for k, v in params.items() if k != "trial_id")
    return f"<table class='small'><tr><th class='l'>parameter</th><th class='l'>value</th></tr>" \
           f"{cells}</table>"


def _ablation_html(ablation: pd.DataFrame | None) -> str:
    if ablation is None:
        return "<p class='note'>No ablation table.</p>"
    head = ("<div class='scroll'><table><tr><th class='l'>row</th><th class='l'>meaning</th>"
            "<th>n</th><th>test RMSE</th><th>test MAE</th><th>test R²</th><th>test MAPE %</th>"
            "<th>params total</th><th>trainable</th><th class='l'>note</th></tr>")
    body = []
    for _, r in ablation.iterrows():
        cells = [_pm(r, m) for m in METRICS]
        body.append(
            f"<tr{' class=ours' if r['kind'] == 'arm' else ''}><td class='l'>{_e(r['row'])}"
            f"</td><td class='l'>{_e(r['meaning'])}</td><td>{_e(fmt(r['n']))}</td>"
            + "".join(f"<td>{_e(c)}</td>" for c in cells)
            + f"<td>{_e(fmt(r['params_total']))}</td><td>{_e(fmt(r['params_trainable']))}</td>"
            f"<td class='l'>{_e(r['note'])}</td></tr>")
    rows = [str(r) for r in ablation["row"]]
    refs = ", ".join(r for r in REFERENCE_ROWS if r in rows)
    return (head + "".join(body) + "</table></div><p class='note'>Test split; mean ± sample "
            f"std over finished seeds (arms {', '.join(a for a in ABLATIONS if a in rows)}); "
            f"reference rows ({refs}) fitted on the same train split, tuned on validation. "
            "R² &lt; 0 is worse than predicting the test mean.</p>")


def _pm(row: pd.Series, metric: str) -> str:
    mean, std = _num(row[f"test_{metric}_mean"]), _num(row[f"test_{metric}_std"])
    if not math.isfinite(mean):
        return "–"
    return fmt(mean) if not math.isfinite(std) else f"{fmt(mean)} ± {fmt(std, 2)}"


def _trials_html(trials: pd.DataFrame, meta: dict[str, Any]) -> str:
    if not len(trials):
        return "<p class='note'>No trials yet.</p>"
    cols = [c for c in ("trial_id", "status", "stopped_by", "epochs_run", "best_epoch",
                        "best_val_rmse", "best_val_r2", "test_rmse", "test_r2", "wall_seconds")
            if c in trials and (not c.startswith("test_") or trials[c].notna().any())]
    cols += [c for c in trials.columns if c.startswith("config.")]
    head = "".join(f"<th class='l'>{_e(c.removeprefix('config.'))}</th>" for c in cols)
    body = []
    for _, row in trials[cols].iterrows():
        cells = "".join(f"<td class='l'>{_e(fmt(row[c]))}</td>" for c in cols)
        body.append(f"<tr>{cells}</tr>")
    status = TERMINATED
    return (f"<p class='note'>Best first among the trials that ended normally ({status}); "
            "the same rows as trials.csv.</p><div class='scroll'><table class='small'>"
            f"<tr>{head}</tr>{''.join(body)}</table></div>")


# ---------------------------------------------------------------------------- helpers
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


_num = as_float


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = ["FIGURES_DIR", "INDEX_FILE", "Section", "StudyView", "importance_reason",
           "learning_curves", "open_study", "param_importances", "plot_ablation",
           "plot_learning_curves", "plot_search_history", "provenance", "search_history",
           "write_html_report"]
