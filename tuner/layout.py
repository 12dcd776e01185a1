"""Every path and file name of an experiment folder, and the one check that keeps them in it.

    STORAGE/NAME/                      an experiment (`ExperimentLayout.root`)
      search_meta.json                 what the experiment is (read by --resume and the report)
      journal.jsonl                    the durable record of the search (tuner.journal)
      driver.lock                      held by the one driver that writes the experiment
      optuna.journal                   the Optuna study (derived from the journal)
      asha_state.json                  ASHA's rung records as plain JSON
      best_test.json                   the exported configuration's test score (once, ever)
      best_test_predictions.csv        ... its per-sample test predictions
      best_attention.csv               ... its mean variate-selection attention
      best_test_examples.csv, best_test_horizon.csv   ... a forecasting search's figures' data
      trials/<dirname>/                one folder per trial (`trial_dirname`)
        train_config.yaml, final.json, TensorBoard events, checkpoint_<epoch>/ ...
      report/                          trials.csv, trials.parquet, summary.md, ... index.html

Names read from the journal or from `best_test.json` are data, never trusted as paths:
`ExperimentLayout.inside` resolves every path built from them and refuses one that leaves
the experiment folder (a crafted journal must not make `--resume` delete files elsewhere).
This module is pure Python (no Ray, no Optuna), so every layer can import it.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timesclip.errors import UserError

# ----------------------------------------------------------------------------- experiment
META_FILE = "search_meta.json"
JOURNAL_FILE = "journal.jsonl"
LOCK_FILE = "driver.lock"
#: Optuna's journal file; earlier versions kept the study in SQLite (still read).
OPTUNA_JOURNAL = "optuna.journal"
LEGACY_OPTUNA_DB = "optuna.db"
ASHA_STATE_FILE = "asha_state.json"
#: ASHA's records as a driver run restored them (one file per driver run, for audits).
ASHA_RESTORED_FILE = "asha_restored-seg{segment}.json"
#: The exported configuration's test scores, computed once per experiment (then only read).
BEST_TEST_FILE = "best_test.json"
#: Per-sample test predictions of the exported configuration (row, year, y_true, y_pred).
BEST_PREDICTIONS_FILE = "best_test_predictions.csv"
#: Its variate-selection attention [V, V] averaged over the test split (bands on both axes).
BEST_ATTENTION_FILE = "best_attention.csv"
#: A forecasting search's: a few test windows (history, truth, TimesCLIP, naive) ...
BEST_EXAMPLES_FILE = "best_test_examples.csv"
#: ... and the MSE per forecast step of TimesCLIP and naive.
BEST_HORIZON_FILE = "best_test_horizon.csv"
#: A cross-validated search (--cv): the selected configuration retrained on every training
#: row, whose last epoch's weights (best.pt) are the ones scored on test.
BEST_RETRAIN_DIR = "best_retrain"

# ----------------------------------------------------------------------------- trials
#: Ray's trial folders (and Ray's own state files) live under this sub-directory.
TRIALS_DIR = "trials"
#: Files a trial writes into its folder; final.json only when its fit() returned.
TRAIN_CONFIG_FILE = "train_config.yaml"
FINAL_FILE = "final.json"
#: A published per-epoch checkpoint folder: checkpoint_000007.
CHECKPOINT_PREFIX = "checkpoint_"
#: fit()'s working checkpoint folder inside the trial folder (removed when the trial ends).
WORK_PREFIX = ".fit-"
#: The key of a trial's stable id: in Ray trial configs, the journal and the report tables.
TRIAL_ID = "trial_id"
#: A stable trial id: t0000, t0001, ... (more digits past 9999).
TRIAL_ID_PATTERN = re.compile(r"^t\d{4,}$")
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}\d+$")

# ----------------------------------------------------------------------------- report
REPORT_DIR = "report"
TRIALS_CSV = "trials.csv"
TRIALS_PARQUET = "trials.parquet"
SUMMARY_MD = "summary.md"
BEST_CONFIG = "best_config.yaml"
ABLATION_CSV = "ablation.csv"
ABLATION_MD = "ablation.md"
INDEX_HTML = "index.html"
FIGURES_DIR = "figures"


def trial_id_for(index: int) -> str:
    """The stable id of the index-th trial of an experiment."""
    return f"t{index:04d}"


#: Short names for trial folder names (TensorBoard shows one run per trial under them).
_SHORT = {"ablation": "", "seed": "seed", "contrastive_weight": "cw", "temperature": "temp",
          "hybrid_alpha": "alpha", "lr": "lr", "backbone_lr": "blr", "weight_decay": "wd",
          "batch_size": "bs", "dropout": "drop", "d_model": "d", "use_contrastive": "con",
          "patch": "patch", "learnable_temperature": "learnT", "freeze_text": "frz"}
_PRIORITY = ("ablation", "seed", "contrastive_weight", "temperature", "hybrid_alpha", "lr")


def trial_dirname(tid: str, params: dict[str, Any], limit: int = 64) -> str:
    """`t0003-cw0.12-temp0.051-alpha0.5`: the trial id and up to four key parameters.

    It is the trial's folder name and so its run name in TensorBoard."""
    names = [n for n in _PRIORITY if n in params]
    names += [n for n in params if n not in names and n != TRIAL_ID]
    parts = [tid]
    for name in names[:4]:
        value = params[name]
        if isinstance(value, bool):
            text = str(int(value))
        elif isinstance(value, float):
            text = f"{value:.2g}"
        else:
            text = str(value)
        parts.append(re.sub(r"[^A-Za-z0-9.+]", "", f"{_SHORT.get(name, name[:6])}{text}"))
    name = "-".join(p for p in parts if p)
    return name[:limit].rstrip("-")


class UnsafePathError(UserError):
    """A name read from the experiment's own files points outside the experiment."""


class StorageFull(OSError):
    """The experiment's storage has no space left (ENOSPC): an infrastructure failure, not
    a property of any configuration. The driver stops in one line; `--resume` continues
    once space is freed."""


def is_storage_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an exception it was raised from or during, is ENOSPC (Ray and
    Optuna wrap what our callbacks raise)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StorageFull) or (isinstance(exc, OSError)
                                            and exc.errno == errno.ENOSPC):
            return True
        if "No space left on device" in str(exc):  # a wrapper that kept only the text
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def check_dirname(dirname: Any, where: str) -> str:
    """A trial folder name read from a file: one component, never `.`/`..`."""
    if not isinstance(dirname, str) or not dirname or "/" in dirname or "\\" in dirname \
            or dirname in (".", "..") or "\x00" in dirname:
        raise UnsafePathError(f"{where}: trial folder {dirname!r} is not one folder name "
                              "under trials/; the file was altered, refusing to use it")
    return dirname


def check_checkpoint_name(name: Any, where: str) -> str:
    """A checkpoint folder name read from a file: checkpoint_NNNNNN and nothing else."""
    if not isinstance(name, str) or not _CHECKPOINT_NAME.match(name):
        raise UnsafePathError(f"{where}: checkpoint {name!r} is not a checkpoint folder name "
                              f"({CHECKPOINT_PREFIX}NNNNNN); the file was altered, refusing "
                              "to use it")
    return name


def check_trial_id(tid: Any, where: str) -> str:
    """A trial id read from a file: it must match the id pattern (it names folders)."""
    if not isinstance(tid, str) or not TRIAL_ID_PATTERN.match(tid):
        raise UnsafePathError(f"{where}: {tid!r} is not a trial id (t0000, t0001, ...); the "
                              "file was altered by hand or by another program")
    return tid


@dataclass(frozen=True)
class ExperimentLayout:
    """The paths of one experiment folder (`root` = STORAGE/NAME, absolute)."""

    root: Path

    @classmethod
    def at(cls, root: str | Path) -> ExperimentLayout:
        return cls(Path(root).expanduser().resolve())

    # -- files of the experiment ---------------------------------------------------
    @property
    def meta(self) -> Path:
        return self.root / META_FILE

    @property
    def journal(self) -> Path:
        return self.root / JOURNAL_FILE

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def optuna_journal(self) -> Path:
        return self.root / OPTUNA_JOURNAL

    @property
    def legacy_optuna_db(self) -> Path:
        return self.root / LEGACY_OPTUNA_DB

    @property
    def asha_state(self) -> Path:
        return self.root / ASHA_STATE_FILE

    def asha_restored(self, segment: int) -> Path:
        return self.root / ASHA_RESTORED_FILE.format(segment=segment)

    @property
    def best_test(self) -> Path:
        return self.root / BEST_TEST_FILE

    @property
    def best_predictions(self) -> Path:
        return self.root / BEST_PREDICTIONS_FILE

    @property
    def best_attention(self) -> Path:
        return self.root / BEST_ATTENTION_FILE

    @property
    def best_examples(self) -> Path:
        return self.root / BEST_EXAMPLES_FILE

    @property
    def best_horizon(self) -> Path:
        return self.root / BEST_HORIZON_FILE

    @property
    def best_retrain(self) -> Path:
        return self.root / BEST_RETRAIN_DIR

    @property
    def trials(self) -> Path:
        return self.root / TRIALS_DIR

    @property
    def report(self) -> Path:
        return self.root / REPORT_DIR

    # -- names read from the experiment's files --------------------------------------
    def inside(self, relative: str | Path, where: str) -> Path:
        """`root / relative`, resolved, or UnsafePathError when it leaves the experiment
        folder (an absolute path, `..`, or a symbolic link that points elsewhere)."""
        path = (self.root / relative).resolve()
        if path != self.root and self.root not in path.parents:
            raise UnsafePathError(f"{where}: {str(relative)!r} points outside the experiment "
                                  f"folder {self.root}; the file was altered by hand or by "
                                  "another program, refusing to use it")
        return path

    def trial_dir(self, dirname: str, where: str = JOURNAL_FILE) -> Path:
        """A trial's folder from its journaled name: one component under trials/."""
        return self.inside(Path(TRIALS_DIR) / check_dirname(dirname, where), where)

    def checkpoint_dir(self, dirname: str, checkpoint: str, where: str = JOURNAL_FILE) -> Path:
        """A published checkpoint folder of a trial, from journaled names."""
        check_checkpoint_name(checkpoint, where)
        return self.inside(self.trial_dir(dirname, where).relative_to(self.root) / checkpoint,
                           where)


__all__ = ["ABLATION_CSV", "ABLATION_MD", "ASHA_RESTORED_FILE", "ASHA_STATE_FILE",
           "BEST_ATTENTION_FILE", "BEST_CONFIG", "BEST_EXAMPLES_FILE", "BEST_HORIZON_FILE",
           "BEST_PREDICTIONS_FILE", "BEST_RETRAIN_DIR", "BEST_TEST_FILE",
           "CHECKPOINT_PREFIX", "FIGURES_DIR", "FINAL_FILE", "INDEX_HTML", "JOURNAL_FILE",
           "LEGACY_OPTUNA_DB", "LOCK_FILE", "META_FILE", "OPTUNA_JOURNAL", "REPORT_DIR",
           "SUMMARY_MD", "TRAIN_CONFIG_FILE", "TRIALS_CSV", "TRIALS_DIR", "TRIALS_PARQUET",
           "TRIAL_ID", "TRIAL_ID_PATTERN", "WORK_PREFIX", "ExperimentLayout", "StorageFull",
           "UnsafePathError", "check_checkpoint_name", "check_dirname", "check_trial_id",
           "is_storage_full", "trial_dirname", "trial_id_for"]
