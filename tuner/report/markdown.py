"""summary.md and ablation.md: the report as text, for a terminal, a pull request or a diff.

summary.md says what ran (space, backbone, data, budget, sampler, scheduler, versions), how
each trial ended (by status, by stop reason, per ASHA rung), the top trials, every failure
and retry, and what won: the exported configuration with its once-evaluated test score next
to the reference predictors. ablation.md is the ablation table (test split, mean ± std over
seeds, reference rows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from tuner.layout import (
    ABLATION_CSV,
    ABLATION_MD,
    BEST_CONFIG,
    BEST_TEST_FILE,
    TRAIN_CONFIG_FILE,
    TRIAL_ID,
)
from tuner.outcomes import Status, StopReason
from tuner.report.baselines import REFERENCE_MEANINGS, REFERENCE_ROWS, BaselineResult
from tuner.report.export import BestTrial
from tuner.report.read import Progress, metrics_of, task_of
from tuner.report.tables import METRICS, config_columns
from tuner.report.text import (
    METRIC_NAMES,
    backbone_line,
    data_line,
    fmt,
    pm,
    proposers_line,
    retrain_note,
    selection_line,
)

#: The rung table's count columns: every way a trial can end, and nothing else.
RUNG_COLUMNS = {StopReason.ASHA: "stopped by ASHA", StopReason.EARLY_STOPPING: "early stopping",
                StopReason.COMPLETED: "completed", StopReason.DIVERGED: "diverged",
                StopReason.ERROR: "error", StopReason.UNFINISHED: "unfinished"}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table (pandas.to_markdown would need `tabulate`)."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def asha_rungs(budget: dict[str, Any]) -> list[int]:
    """Epoch counts at which ASHA compares trials, as Ray's ASHA bracket computes them.

    Milestones are grace * rf^k (rf may be fractional; a trial is judged at the first epoch
    >= the milestone); every trial is stopped at max_epochs (max_t), so it closes the list.
    """
    try:
        grace = max(float(budget["grace_period"]), 1.0)
        factor = float(budget["reduction_factor"])
        max_epochs = int(budget["max_epochs"])
    except (KeyError, TypeError, ValueError):
        return []
    if factor <= 1 or max_epochs < 1:
        return [max_epochs] if max_epochs >= 1 else []
    count = int(math.log(max_epochs / grace) / math.log(factor) + 1) if max_epochs >= grace \
        else 0
    epochs = {math.ceil(grace * factor**k - 1e-9) for k in range(count)}
    return sorted(e for e in epochs if e < max_epochs) + [max_epochs]


def rung_table(trials: pd.DataFrame, budget: dict[str, Any]) -> str:
    """Per number of epochs: whether it is an ASHA rung, how many trials reached it, and
    how the trials that ended there ended (one column per StopReason, so every trial is
    counted exactly once)."""
    rungs = asha_rungs(budget)
    epochs = sorted(set(rungs) | {int(e) for e in trials["epochs_run"]})
    rows = []
    for epoch in epochs:
        at = trials[trials["epochs_run"] == epoch]
        counts = [int((at["stopped_by"] == reason).sum()) for reason in RUNG_COLUMNS]
        reached = int((trials["epochs_run"] >= epoch).sum())
        rows.append([epoch, "yes" if epoch in rungs else "", reached, *counts])
    return markdown_table(["epochs", "ASHA rung", "reached", *RUNG_COLUMNS.values()], rows)


def _key_params(row: pd.Series, names: Sequence[str]) -> str:
    return ", ".join(f"{n}={fmt(row.get(f'config.{n}'))}" for n in names)


def _wall_line(progress: Progress | None) -> str:
    if progress is None:
        return "- wall time: – s over 1 driver run(s)"
    line = (f"- wall time: {fmt(progress.wall_seconds, 4)} s over {progress.drivers} "
            "driver run(s)")
    if progress.interruptions:
        line += (f"; {progress.interruptions} interrupted (" + ", ".join(progress.signals)
                 + ")" + (" and resumed" if progress.finished else ""))
    return line


def write_summary(path: Path, meta: dict[str, Any], trials: pd.DataFrame,
                  best: BestTrial | None, best_test: dict[str, Any] | None,
                  notes: Sequence[str], ablation: pd.DataFrame | None,
                  references: list[BaselineResult] | None = None, *,
                  progress: Progress | None = None) -> None:
    """summary.md: what ran, on which backbone and data, how it ended, and what won."""
    kind = meta.get("kind", "search")
    metric = meta.get("metric", "val_rmse")
    budget = meta.get("budget") or {}
    names = config_columns(meta)
    out = [f"# Search report: {meta.get('name', '?')}", ""]
    out += [f"- space: `{meta.get('space', '?')}` (kind: {kind})",
            f"- {backbone_line(str(meta.get('backbone', '?')))}",
            f"- {data_line(meta)}",
            f"- selection: {selection_line(meta)}",
            "- budget: " + ", ".join(f"{k}={v}" for k, v in budget.items()),
            f"- search: {meta.get('searcher', 'tpe')} sampler, "
            f"{meta.get('scheduler', 'asha')} scheduler, seed {meta.get('seed', '?')}",
            *([f"- {line}"] if (line := proposers_line(meta, trials)) else []),
            _wall_line(progress),
            "- resources per trial: " + ", ".join(
                f"{k}={v}" for k, v in (meta.get("resources") or {}).items()),
            "- versions: " + ", ".join(
                f"{k} {v}" for k, v in (meta.get("versions") or {}).items()),
            f"- started: {meta.get('started', '?')}; report generated: "
            f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}", ""]

    out += ["## Trials by status", ""]
    status_counts = trials["status"].value_counts().sort_index()
    out.append(markdown_table(["status", "trials"], list(status_counts.items())
                              + [["total", len(trials)]]))
    stop_counts = trials["stopped_by"].value_counts().sort_index()
    out += ["", markdown_table(["ended by", "trials"], list(stop_counts.items())), ""]
    if progress is not None and not progress.finished:
        out += [f"**interrupted: {progress.ended} of {progress.total} trials "
                "finished.** Continue with the same command plus `--resume` (same "
                "--storage and --name); no best configuration is exported and the test "
                "split is not touched until every trial has finished.", ""]

    if meta.get("scheduler", "asha") == "asha" and kind != "ablation":
        out += ["## ASHA rungs", "",
                "How many trials ended after each number of epochs (rungs = grace_period x "
                "reduction_factor^k, capped at max_epochs).", "",
                rung_table(trials, budget), ""]
    else:
        out += ["## Epochs per trial", "",
                "No scheduler stops trials here (FIFO): each ran to max_epochs or to its own "
                "early stopping.", "",
                markdown_table(["epochs", "trials"], sorted(
                    trials["epochs_run"].value_counts().items())), ""]

    out += [f"## Top {min(5, len(trials))} trials (validation {metric})", ""]
    out.append(markdown_table(
        ["rank", TRIAL_ID, f"best_{metric}", "best epoch", "epochs", "ended by", "params"],
        [[i + 1, r[TRIAL_ID], fmt(r[f"best_{metric}"]), fmt(r["best_epoch"]),
          r["epochs_run"], r["stopped_by"], _key_params(r, names)]
         for i, (_, r) in enumerate(trials.head(5).iterrows())]))
    out.append("")
    out += _failures(trials)
    if kind == "ablation":
        refs = ", ".join(REFERENCE_ROWS[task_of(meta)])
        out += ["## Ablation", "", f"See {ABLATION_MD} / {ABLATION_CSV} (test split, mean ± "
                f"std over seeds, with the reference rows {refs}). {BEST_CONFIG} is not "
                "written for an ablation experiment: its arms are fixed switch settings, not "
                "a search.", ""]
        if ablation is not None:
            out += [ablation_markdown_table(ablation, metrics_of(meta)), ""]
    else:
        out += _best_section(metric, best, best_test, references, metrics_of(meta),
                             cv=meta.get("cv"))
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    path.write_text("\n".join(out))


def _failures(trials: pd.DataFrame) -> list[str]:
    failed = trials[trials["status"].isin([Status.ERROR.value, Status.DIVERGED.value])]
    out = [f"## Failures ({len(failed)})", "",
           "Diverged trials (a non-finite loss: a property of the sampled configuration) "
           "are not retried; failed ones exhausted --max-failures.", ""]
    out += [f"- `{r['trial_id']}` ({r['status'].lower()}) after {r['epochs_run']} "
            f"epoch(s): {r['error']}" for _, r in failed.iterrows()] or ["none"]
    out.append("")
    retried = trials[trials["num_failures"] > 0]
    out += [f"## Retried trials ({len(retried)})", "",
            "Infrastructure failures (a lost node, a killed worker) retried from the "
            "trial's last checkpoint.", ""]
    out += [f"- `{r['trial_id']}` retried {r['num_failures']}x (last on node "
            f"{r['node'] or '?'}): {r['retry_errors']}" for _, r in retried.iterrows()] \
        or ["none"]
    out.append("")
    return out


def _best_section(metric: str, best: BestTrial | None, best_test: dict[str, Any] | None,
                  references: list[BaselineResult] | None,
                  metrics: Sequence[str], cv: Any = None) -> list[str]:
    out = ["## Best configuration", ""]
    if best is None:
        return out + [f"No trial without an error has both a finite {metric} and a stored "
                      f"{TRAIN_CONFIG_FILE}: {BEST_CONFIG} was not written.", ""]
    out += [f"- trial `{best.trial_id}`: {metric} = {fmt(best.value)} at epoch "
            f"{fmt(best.epoch)} ("
            + (f"mean over the --cv {cv} folds)" if cv is not None else "validation split)"),
            f"- exported to {BEST_CONFIG} (a complete TrainConfig + provenance; "
            f"run it with `python -m timesclip train --config {BEST_CONFIG}`)"]
    if best_test is not None:
        test = best_test.get("test") or {}
        out.append("- test split, evaluated once for the exported configuration"
                   f" (trial `{best_test.get('trial_id')}`): "
                   + ", ".join(f"{METRIC_NAMES[k]} {fmt(test.get(k))}" for k in metrics)
                   + (f"; scored with {note}" if (note := retrain_note(best_test)) else ""))
        if str(best_test.get(TRIAL_ID)) != best.trial_id:
            out.append(f"- note: {BEST_TEST_FILE} was evaluated for trial "
                       f"`{best_test.get('trial_id')}`, not for `{best.trial_id}`")
        for ref in references or []:
            meaning = REFERENCE_MEANINGS.get(ref.name, ref.name)
            refit = "; refitted on train + val, as the retrain" if ref.refit else ""
            out.append(f"- {meaning} (same test split{refit}): "
                       + ", ".join(f"{METRIC_NAMES[k]} {fmt(ref.test.get(k))}"
                                   for k in metrics))
    else:
        out.append(f"- no {BEST_TEST_FILE}: the test split was not evaluated (search "
                   "interrupted or still running)")
    return out + [""]


def ablation_markdown_table(table: pd.DataFrame, metrics: Sequence[str] = METRICS) -> str:
    """The ablation table as markdown (summary.md and ablation.md), in the task's metrics."""
    rows = [[r["row"], r["meaning"], r["n"],
             *(pm(r[f"test_{m}_mean"], r[f"test_{m}_std"]) for m in metrics),
             fmt(r["train_seconds_mean"], 3), fmt(r["params_total"]),
             fmt(r["params_trainable"]), fmt(r["params_frozen"]), r["note"]]
            for _, r in table.iterrows()]
    return markdown_table(["row", "meaning", "n", *(f"test {METRIC_NAMES[m]}" for m in metrics),
                           "train s (mean)", "params total", "trainable", "frozen", "note"],
                          rows)


def write_ablation_md(path: Path, meta: dict[str, Any], table: pd.DataFrame) -> None:
    """ablation.md: the arms' test metrics over seeds, with the reference rows."""
    seeds = int(table.loc[table["kind"] == "arm", "n"].max() or 0)
    out = [f"# Ablation: {meta.get('name', '?')}", "",
           f"- {backbone_line(str(meta.get('backbone', '?')))}",
           f"- {data_line(meta)}",
           f"- mean ± std over up to {seeds} seeds (column n = finished seeds), test split; "
           "std is the sample standard deviation (ddof=1) and is omitted when n = 1",
           *_units_lines(meta), "",
           ablation_markdown_table(table, metrics_of(meta)), ""]
    path.write_text("\n".join(out))


def _units_lines(meta: dict[str, Any]) -> list[str]:
    """What the numbers of an ablation table are, and what its reference rows are."""
    if task_of(meta) == "forecast":
        return ["- MSE / MAE on the standardised scale over every test window "
                "(Time-Series-Library's protocol)",
                "- reference rows `naive` (repeat the last value) and `dlinear` (trained with "
                "TSLib's recipe on the same training windows) scored on the same windows"]
    return ["- RMSE / MAE in the yield's own units, MAPE in percent; R² < 0 is worse than "
            "predicting the test mean",
            "- reference rows `mean`, `ridge` and `hgb` (gradient boosting) are fitted on the "
            "same train split (ridge alpha and the hgb setting chosen on val) and scored once "
            "on the same test split"]


__all__ = ["RUNG_COLUMNS", "ablation_markdown_table", "asha_rungs", "markdown_table",
           "rung_table", "write_ablation_md", "write_summary"]
