"""report/index.html and the data behind each figure, on experiment folders written without
Ray (the journal through the real writer, a real Optuna study journal, the CSVs the search
stores when it scores the test split).

Every expectation is computed from the plan below, not read back from the code under test.
The browser checks live in test_report_browser.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from journal_fixtures import ExperimentWriter, rmse_metrics

from timesclip.plots import attention_frame, predictions_frame, write_csv
from tuner.journal import load_state, read_events
from tuner.layout import FIGURES_DIR, LEGACY_OPTUNA_DB, OPTUNA_JOURNAL
from tuner.report import build_report, trials_table
from tuner.report.figures import (
    importance_reason,
    learning_curves,
    open_study,
    param_importances,
    search_history,
)
from tuner.study import study_storage

MAX_EPOCHS = 4
NAME = "page"

# (trial params, optuna state, plan) — plan: list of (epoch, val_rmse, decision), how it ended
PLAN = {
    "t0000": ({"use_contrastive": False, "lr": 1e-3}, "COMPLETE",
              [(1, 2.0, "continue"), (2, 1.5, "continue"), (3, 1.2, "continue"),
               (4, 1.1, "stop")], ("TERMINATED", "completed")),
    "t0001": ({"use_contrastive": False, "lr": 3e-3}, "PRUNED",
              [(1, 3.0, "stop")], ("TERMINATED", "asha")),
    "t0002": ({"use_contrastive": True, "temperature": 0.07, "lr": 5e-4}, "COMPLETE",
              [(1, 1.9, "continue"), (2, 1.4, "continue"), (3, 1.0, "continue"),
               (4, 0.9, "stop")], ("TERMINATED", "completed")),
    # epoch 2 is reported again after a retry: two points, the later value stands
    "t0003": ({"use_contrastive": False, "lr": 2e-4}, "COMPLETE",
              [(1, 2.2, "continue"), (2, 1.8, "continue"), (2, 1.7, "continue"),
               (3, 1.6, "continue")], ("TERMINATED", "early_stopping")),
    "t0004": ({"use_contrastive": True, "temperature": 0.2, "lr": 8e-3}, "PRUNED",
              [(1, 2.5, "continue")], ("DIVERGED", "diverged")),
    "t0005": ({"use_contrastive": False, "lr": 6e-3}, "PRUNED",
              [(1, 2.7, "continue"), (2, 2.6, "stop")], ("TERMINATED", "asha")),
}


def _meta(bundle, paths, base, *, num_samples: int) -> dict:
    return {"name": NAME, "space": "quick", "kind": "search", "metric": "val_rmse",
            "mode": "min", "backbone": "tiny",
            "data": {"paths": [str(p) for p in paths], "fingerprint": bundle.fingerprint,
                     "description": "synthetic test data", "synthetic": True,
                     "bands": list(bundle.bands)},
            "base_config": base.to_dict(), "sampled_names": ["use_contrastive", "temperature",
                                                             "lr"],
            "budget": {"num_samples": num_samples, "max_epochs": MAX_EPOCHS,
                       "grace_period": 1, "reduction_factor": 2, "max_concurrent": 2},
            "searcher": "tpe", "scheduler": "asha", "seed": 0,
            "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
            "versions": {"timesclip": "0.1.0"}, "started": "2026-01-01T00:00:00+00:00"}


def write_page_experiment(exp: Path, bundle, paths, base, *, interrupted: bool = False,
                          selection: bool = True) -> None:
    """The plan above as a finished search (or, interrupted=True, killed while t0005 runs),
    with its Optuna study, and for a finished one best_test.json + predictions + attention
    of the winner t0002 (as tuner.runner stores them)."""
    import optuna

    w = ExperimentWriter(exp, _meta(bundle, paths, base, num_samples=len(PLAN)))
    w.driver_start(1, 100.0)
    t = 100.0
    study = optuna.create_study(study_name=NAME, storage=study_storage(exp / OPTUNA_JOURNAL),
                                direction="minimize")
    for tid, (params, ostate, plan, (status, stopped_by)) in PLAN.items():
        t += 1
        assert w.trial(t, params) == tid
        w.start(tid, t)
        w.train_config(tid, base.replace(**params, epochs=MAX_EPOCHS))
        last = interrupted and tid == "t0005"
        for i, (epoch, value, decision) in enumerate(plan):
            if last and i == len(plan) - 1:
                break  # killed before its second epoch
            if tid == "t0003" and i == 2:
                w.retry(tid, t, "RayActorError: the actor died")
            t += 1
            w.result(tid, t, epoch, rmse_metrics(value, epoch), decision=decision)
        if tid == "t0004":
            w.diverged(tid, t + 0.5, 2)
        if last:
            continue
        t += 1
        w.end(tid, t, status, stopped_by, epochs_run=plan[-1][0],
              error="diverged: non-finite loss" if status == "DIVERGED" else None)
        if stopped_by in ("completed", "early_stopping"):
            w.final(tid, {"epochs_run": plan[-1][0], "test": None, "backbone": "tiny",
                          "params": {"total": 10, "trainable": 5, "frozen": 5}})
        dists = {"use_contrastive": optuna.distributions.CategoricalDistribution([True, False]),
                 "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
        if "temperature" in params:
            dists["temperature"] = optuna.distributions.FloatDistribution(0.01, 0.5, log=True)
        best = min(v for _, v, _ in plan)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, user_attrs={"trial_id": tid},
            state=getattr(optuna.trial.TrialState, ostate),
            value=best if ostate == "COMPLETE" else None,
            intermediate_values={e: v for e, v, _ in plan}))
    if interrupted:
        w.close()
        return
    w.driver_end(t + 1)
    w.close()
    # what tuner.runner stores when it scores the exported configuration once
    rng = np.random.default_rng(0)
    test = bundle.test
    y_pred = test.y_raw + rng.normal(0.0, 0.3, len(test))
    write_csv(predictions_frame(test.y_raw, y_pred, test.years, test.index),
              exp / "best_test_predictions.csv")
    v = len(bundle.bands)
    attention = rng.random((v, v)) + np.eye(v)
    attention /= attention.sum(axis=1, keepdims=True)
    if selection:
        write_csv(attention_frame(attention, bundle.bands), exp / "best_attention.csv",
                  index=True)
    from timesclip.metrics import regression_metrics

    (exp / "best_test.json").write_text(json.dumps({
        "trial_id": "t0002", "val_rmse": 0.9, "epoch": 4,
        "test": regression_metrics(test.y_raw, y_pred),
        "predictions": "best_test_predictions.csv",
        "attention": "best_attention.csv" if selection else None,
        "bands": list(bundle.bands), "use_variate_selection": selection}))


@pytest.fixture(scope="module")
def page_exp(tmp_path_factory, small_bundle, small_csvs, tiny_config):
    exp = tmp_path_factory.mktemp("page") / NAME
    write_page_experiment(exp, small_bundle, small_csvs, tiny_config)
    return exp


@pytest.fixture(scope="module")
def page(page_exp, small_bundle):
    paths = build_report(page_exp, data_bundle=small_bundle, echo=lambda _: None)
    return {"paths": paths, "html": paths.index_html.read_text(), "exp": page_exp}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _images(html: str) -> list[str]:
    return re.findall(r"<img src='([^']+)'", html)


# ------------------------------------------------------------------------------ figure data
def test_history_has_one_point_per_journaled_epoch_in_journal_order(page_exp):
    events = read_events(page_exp / "journal.jsonl")
    history = search_history(events, load_state(page_exp))
    planned = [(tid, e, v, d) for tid, (_, _, plan, _) in PLAN.items() for e, v, d in plan]
    assert len(history) == len(planned) == sum(
        1 for ev in events if ev["ev"] == "result" and not ev.get("diverged"))
    assert history["step"].tolist() == list(range(1, len(planned) + 1))
    assert list(zip(history["trial_id"], history["epoch"], history["value"])) == \
        [(tid, e, v) for tid, e, v, _ in planned]
    # ASHA stops: the "stop" results of trials ASHA ended (not the completed trials' last)
    stops = history[history["asha_stop"]]
    assert list(zip(stops["trial_id"], stops["epoch"])) == [("t0001", 1), ("t0005", 2)]
    best, expected = float("inf"), []
    for _, _, value, _ in planned:
        best = min(best, value)
        expected.append(best)
    assert history["best_so_far"].tolist() == pytest.approx(expected)


def test_learning_curves_follow_the_trials_table(page_exp, small_bundle):
    from tuner.report import load_meta, load_trials

    state = load_state(page_exp)
    table = trials_table(load_trials(page_exp, state), load_meta(page_exp))
    curves = learning_curves(state, table, top=3)
    assert [tid for tid, _, _ in curves] == ["t0002", "t0000", "t0003"]  # best first
    t0003 = curves[2][2]
    assert t0003["epoch"].tolist() == [1, 2, 3]
    assert t0003["value"].tolist() == pytest.approx([2.2, 1.7, 1.6])  # re-report stands
    ended = {tid: how for tid, how, _ in learning_curves(state, table)}
    assert ended["t0001"] == "asha" and ended["t0004"] == "diverged"


def test_importance_needs_two_complete_trials_and_a_varying_parameter(tmp_path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
             "use_contrastive": optuna.distributions.CategoricalDistribution([True, False])}

    def study(name: str, trials: list[tuple[float, bool, float | None]]) -> Path:
        db = tmp_path / f"{name}.journal"
        s = optuna.create_study(study_name=name, storage=study_storage(db))
        for lr, con, value in trials:
            s.add_trial(optuna.trial.create_trial(
                params={"lr": lr, "use_contrastive": con}, distributions=dists, value=value,
                state=optuna.trial.TrialState.COMPLETE if value is not None
                else optuna.trial.TrialState.PRUNED))
        return db

    one = open_study(study("one", [(1e-3, True, 1.0), (2e-3, True, None)]), "one")
    assert one.complete == 1 and one.pruned == 1
    assert "at least 2 COMPLETE" in importance_reason(one)
    same = open_study(study("same", [(1e-3, True, 1.0), (1e-3, True, 2.0)]), "same")
    assert same.varying == [] and "differs" in importance_reason(same)
    ok = open_study(study("ok", [(1e-3, True, 1.0), (3e-3, True, 2.0), (5e-4, True, 0.5),
                                 (2e-4, True, 0.4)]), "ok")
    assert importance_reason(ok) is None and ok.varying == ["lr"]
    values = param_importances(ok)
    assert list(values) == ["lr"] and sum(values.values()) == pytest.approx(1.0)


def test_study_is_opened_read_only(page_exp, tmp_path):
    exp = _copy(page_exp, tmp_path / "ro")
    db = exp / OPTUNA_JOURNAL
    before = db.read_bytes()
    db.chmod(0o444)
    view = open_study(db, NAME)
    assert view.complete == 3 and view.pruned == 3
    assert view.varying == ["lr", "use_contrastive"]  # temperature is not in every trial
    with pytest.raises(PermissionError, match="read-only"):  # no write can get through
        view.study.set_user_attr("note", "x")
    assert db.read_bytes() == before
    assert sorted(p.name for p in exp.glob("optuna.journal*")) == [OPTUNA_JOURNAL]


def test_an_earlier_versions_sqlite_study_is_still_read(page_exp, small_bundle, tmp_path):
    """Experiments of earlier versions hold optuna.db (SQLite): the report reads it,
    read-only, when there is no optuna.journal."""
    import optuna

    exp = _copy(page_exp, tmp_path / "legacy")
    legacy = exp / LEGACY_OPTUNA_DB
    optuna.copy_study(from_study_name=NAME, to_study_name=NAME,
                      from_storage=study_storage(exp / OPTUNA_JOURNAL, read_only=True),
                      to_storage=f"sqlite:///{legacy}")
    (exp / OPTUNA_JOURNAL).unlink()
    before = legacy.read_bytes()
    legacy.chmod(0o444)
    view = open_study(legacy, NAME)
    assert view.complete == 3 and view.pruned == 3
    assert view.varying == ["lr", "use_contrastive"]
    paths = build_report(exp, data_bundle=small_bundle, echo=lambda _: None)
    assert "param_importance.png" in paths.index_html.read_text()
    assert legacy.read_bytes() == before and not (exp / OPTUNA_JOURNAL).exists()


def test_an_unreadable_study_is_a_note_and_stays_untouched(page_exp, small_bundle,
                                                           tmp_path):
    """An empty optuna.journal (a copy cut short): opened read-only, nothing written."""
    exp = _copy(page_exp, tmp_path / "empty-db")
    (exp / OPTUNA_JOURNAL).write_bytes(b"")
    paths = build_report(exp, data_bundle=small_bundle, echo=lambda _: None)
    html = paths.index_html.read_text()
    assert "The Optuna study could not be read" in html
    assert "param_importance.png" not in html and "search_history.png" in html
    assert (exp / OPTUNA_JOURNAL).stat().st_size == 0


# ------------------------------------------------------------------------------ the page
def test_page_headline_figures_and_captions(page, small_bundle):
    html, report = page["html"], page["paths"].directory
    assert page["paths"].index_html == report / "index.html"
    images = _images(html)
    assert [Path(i).name for i in images] == [
        "search_history.png", "learning_curves.png", "param_importance.png",
        "parallel_coordinates.png", "predicted_vs_actual.png", "attention.png"]
    for image in images:
        assert image.startswith(f"{FIGURES_DIR}/")
        assert (report / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (report / FIGURES_DIR).iterdir()) == \
        sorted(Path(i).name for i in images)
    # headline: the winner, its validation and once-evaluated test metrics, the baselines
    best_test = json.loads((page["exp"] / "best_test.json").read_text())
    assert "Best configuration: trial t0002" in html
    assert f"<td>{best_test['test']['rmse']:.4g}</td>" in html
    for label in ("reference: training mean", "reference: ridge regression",
                  "reference: gradient boosting (HistGradientBoostingRegressor)"):
        assert label in html
    assert "Toy backbone." in html and "Synthetic data." in html
    # every figure's caption names the data and the backbone
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html)
    assert len(captions) == len(images)
    for caption in captions:
        assert "SYNTHETIC data: synthetic test data" in caption
        assert "backbone tiny (random toy weights, NOT pretrained CLIP)" in caption
    # offline: no script, no remote URL anywhere
    assert "<script" not in html and "http://" not in html and "https://" not in html


def test_page_attention_and_predictions_come_from_the_stored_files(page, small_bundle):
    html = page["html"]
    n = len(small_bundle.test)
    assert f"on the {n} test samples, scored once" in html
    years = sorted({int(y) for y in small_bundle.test.years})
    assert f"Right: residuals per year ({', '.join(map(str, years))})" in html
    assert "best_attention.csv" in html


def test_an_unreadable_predictions_file_is_a_note_and_keeps_the_attention(
        page_exp, small_bundle, tmp_path):
    exp = _copy(page_exp, tmp_path / "bad-predictions")
    (exp / "best_test_predictions.csv").write_text("row,year\nnot,numbers\n")
    html = build_report(exp, data_bundle=small_bundle, echo=lambda _: None
                        ).index_html.read_text()
    assert "best_test_predictions.csv is unreadable" in html
    assert "predicted_vs_actual.png" not in html and "attention.png" in html


def test_page_never_rescores_the_test_split(page_exp, small_bundle, tmp_path, monkeypatch):
    """The report reads the stored predictions; loading a model would be a re-score."""
    import timesclip.inference

    def forbidden(*args, **kwargs):
        raise AssertionError("the report must not run a model")

    for name in ("load_for_inference", "evaluate_arrays", "predict_with_attention"):
        monkeypatch.setattr(timesclip.inference, name, forbidden)
    exp = _copy(page_exp, tmp_path / "noscore")
    paths = build_report(exp, data_bundle=small_bundle, echo=lambda _: None)
    assert "predicted_vs_actual.png" in paths.index_html.read_text()


def test_page_without_variate_selection_says_so(small_bundle, small_csvs, tiny_config,
                                                tmp_path):
    exp = tmp_path / NAME
    write_page_experiment(exp, small_bundle, small_csvs, tiny_config, selection=False)
    html = build_report(exp, data_bundle=small_bundle,
                        echo=lambda _: None).index_html.read_text()
    assert "attention.png" not in html
    assert "has no variate selection" in html


def test_interrupted_page_says_so_and_shows_no_test_metrics(small_bundle, small_csvs,
                                                            tiny_config, tmp_path):
    exp = tmp_path / NAME
    write_page_experiment(exp, small_bundle, small_csvs, tiny_config, interrupted=True)
    paths = build_report(exp, data_bundle=small_bundle, echo=lambda _: None)
    html = paths.index_html.read_text()
    assert "<b>Interrupted.</b> 5 of 6 trials finished" in html
    assert "Leading trial so far: t0002" in html
    headline = html.split("<h2>Headline</h2>")[1].split("<h2")[0]
    cells = re.findall(r"<td>([^<]*)</td>", headline)
    assert cells[2:6] == ["–", "–", "–", "–"]  # test RMSE, MAE, R², MAPE: none
    assert "reference:" not in headline
    assert "predicted_vs_actual.png" not in html and "test split is not touched" in html
    # what exists is shown: the history holds every journaled epoch so far
    assert "search_history.png" in html and "learning_curves.png" in html


def test_a_failing_figure_becomes_a_note_not_a_lost_report(page_exp, small_bundle, tmp_path,
                                                           monkeypatch):
    import tuner.report.figures.curves as curves

    def broken(*args, **kwargs):
        raise RuntimeError("plot bug")

    monkeypatch.setattr(curves, "plot_learning_curves", broken)
    exp = _copy(page_exp, tmp_path / "broken")
    notes: list[str] = []
    paths = build_report(exp, data_bundle=small_bundle, echo=notes.append)
    html = paths.index_html.read_text()
    assert "learning_curves.png" not in html and "plot bug" in html
    assert any("Learning curves: figure not drawn (RuntimeError: plot bug)" in n
               for n in notes)
    assert paths.trials_csv.is_file() and paths.best_config is not None


def test_ablation_page(tmp_path, small_bundle, small_csvs, tiny_config):
    """Arms with two seeds (one arm with one), the references as lines, no Optuna study."""
    from timesclip.config import apply_ablation
    from tuner.report.figures import plot_ablation

    meta = _meta(small_bundle, small_csvs, tiny_config, num_samples=10)
    meta.update(kind="ablation", space="ablation", sampled_names=["ablation", "seed"],
                searcher="grid", scheduler="fifo")
    w = ExperimentWriter(tmp_path / "ab", meta)
    w.driver_start(1, 10.0)
    t = 10.0
    rmse = {"E1": 1.0, "E2": 1.2, "E3": 1.1, "E4": 1.5, "E5": 2.0}
    for arm, base in rmse.items():
        for seed in (0, 1):
            t += 1
            tid = w.trial(t, {"ablation": arm, "seed": seed})
            w.train_config(tid, apply_ablation(tiny_config, arm).replace(seed=seed))
            w.result(tid, t + 0.5, 1, rmse_metrics(base + seed, 1), decision="stop")
            w.end(tid, t + 0.7, "TERMINATED", "completed", epochs_run=1)
            w.final(tid, {"epochs_run": 1, "backbone": "tiny",
                          "test": {"rmse": base + 0.1 * seed, "mae": base, "r2": 0.5 - seed,
                                   "mape": 10.0},
                          "params": {"total": 100, "trainable": 50, "frozen": 50}})
    w.driver_end(t + 1)
    w.close()
    paths = build_report(tmp_path / "ab", data_bundle=small_bundle, echo=lambda _: None)
    html = paths.index_html.read_text()
    assert "Ablation report" in html
    assert [Path(i).name for i in _images(html)] == [
        "ablation.png", "search_history.png", "learning_curves.png"]
    table = pd.read_csv(paths.ablation_csv)
    assert "| hgb |" in paths.ablation_md.read_text() and "hgb" in table["row"].tolist()
    fig = plot_ablation(table, caption="c")
    rmse_ax, r2_ax = fig.axes
    heights = [bar.get_height() for bar in rmse_ax.patches]
    assert heights == pytest.approx([base + 0.05 for base in rmse.values()])
    lines = {line.get_label().split(" ")[0]: line.get_ydata()[0] for line in rmse_ax.lines
             if not line.get_label().startswith("_")}
    refs = table.set_index("row")
    for ref in ("mean", "ridge", "hgb"):
        assert lines[ref] == pytest.approx(refs.loc[ref, "test_rmse_mean"])
    assert [bar.get_height() for bar in r2_ax.patches] == pytest.approx([0.0] * 5)


def test_importance_is_fitted_once_and_the_figure_shows_the_table(page_exp, small_bundle,
                                                                   tmp_path, monkeypatch):
    """fANOVA (a random forest) runs once per report: the figure is drawn from the values
    the table prints, not from a second fit."""
    import optuna.importance
    import optuna.visualization.matplotlib as ovm

    fits, drawn = [], []
    real_evaluate = optuna.importance.FanovaImportanceEvaluator.evaluate
    real_plot = ovm.plot_param_importances

    def counting(self, *args, **kwargs):
        fits.append(1)
        return real_evaluate(self, *args, **kwargs)

    def recording(study, evaluator=None, params=None, **kwargs):
        drawn.append(optuna.importance.get_param_importances(
            study, evaluator=evaluator, params=params))
        return real_plot(study, evaluator=evaluator, params=params, **kwargs)

    monkeypatch.setattr(optuna.importance.FanovaImportanceEvaluator, "evaluate", counting)
    monkeypatch.setattr(ovm, "plot_param_importances", recording)
    exp = _copy(page_exp, tmp_path / "once")
    html = build_report(exp, data_bundle=small_bundle, echo=lambda _: None) \
        .index_html.read_text()
    assert len(fits) == 1 and len(drawn) == 1
    for name, value in drawn[0].items():
        assert f"<tr><td>{name}</td><td>{value:.3f}</td></tr>" in html


def test_history_best_so_far_follows_the_metric_mode(page_exp):
    """A maximised metric (val_r2 = 1 - rmse/10 in the plan): the running best is a running
    maximum, by the same comparison selection uses."""
    history = search_history(read_events(page_exp / "journal.jsonl"), load_state(page_exp),
                             "val_r2", "max")
    planned = [1.0 - v / 10.0 for _, (_, _, plan, _) in PLAN.items() for _, v, _ in plan]
    assert history["value"].tolist() == pytest.approx(planned)
    assert history["best_so_far"].tolist() == pytest.approx(np.maximum.accumulate(planned))


def test_a_stored_file_name_outside_the_experiment_is_refused(page_exp, small_bundle,
                                                              tmp_path):
    """best_test.json altered to name a predictions file outside the experiment: the report
    stops in one line (a UserError: exit 2 from the CLI) and reads nothing elsewhere;
    the report already there stays as it was."""
    from tuner.layout import UnsafePathError

    exp = _copy(page_exp, tmp_path / "crafted" / NAME)
    shutil.copy(exp / "best_test_predictions.csv", tmp_path / "crafted" / "elsewhere.csv")
    build_report(exp, data_bundle=small_bundle, echo=lambda _: None)
    before = sorted(p.name for p in (exp / "report").iterdir())
    for key, value in (("predictions", "../elsewhere.csv"), ("attention", "/etc/passwd"),
                       ("checkpoint", "../../x")):
        best_test = json.loads((page_exp / "best_test.json").read_text())
        best_test[key] = value
        (exp / "best_test.json").write_text(json.dumps(best_test))
        with pytest.raises(UnsafePathError, match=rf"best_test.json \({key}\): .* points "
                                                  "outside the experiment folder"):
            build_report(exp, data_bundle=small_bundle, echo=lambda _: None)
        assert sorted(p.name for p in (exp / "report").iterdir()) == before


def test_page_escapes_what_it_reads(page_exp, small_bundle, tmp_path):
    """Every value from the experiment's files is escaped: markup in a name or a
    parameter value shows as text and never becomes an element."""
    exp = _copy(page_exp, tmp_path / "markup")
    meta = json.loads((exp / "search_meta.json").read_text())
    meta["name"] = "<script>alert('x')</script>"
    meta["data"]["description"] = "<img src=x onerror=alert(1)>"
    (exp / "search_meta.json").write_text(json.dumps(meta))
    html = build_report(exp, data_bundle=small_bundle,
                        echo=lambda _: None).index_html.read_text()
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
