"""Where the search keeps its Optuna study, and how it is opened.

The study lives in `STORAGE/NAME/optuna.journal`: Optuna's own journal storage, an
append-only file of JSON operations (`JournalStorage` over `JournalFileBackend`). It
replaced an SQLite database (`optuna.db`) for two reasons:

- speed: the driver asks, reports and tells Optuna between trial events. For a trial of
  three epochs in the quick space with TPE, that took ~34 ms with SQLite (its ORM; ask
  21 ms, tell 7 ms) and ~5 ms with the file journal (`benchmarks/study_storage.py`, 24-40
  trials); with concurrent trials that time delays the other trials' hand-offs;
- shared storage: `--storage` is a shared folder on a cluster, often NFS, where SQLite's
  locking is unreliable; the file journal needs no fcntl() locks.

Only the search driver writes the study. The study is derived data: `--resume` rebuilds it
from `journal.jsonl` (see `tuner.tracking.rebuild_study`), so a line cut short by a killed
driver never matters. Experiments of earlier versions still have `optuna.db`: the report
reads it, and `--resume` replaces it with `optuna.journal`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from tuner.journal import LEGACY_OPTUNA_DB, OPTUNA_JOURNAL


class _NoWrites(JournalFileOpenLock):
    """The lock of a read-only study: taking it (which every append does) fails. (A file
    lock of Optuna's public API with acquire refused; it never creates its lock file.)"""

    def acquire(self) -> bool:
        raise PermissionError("the Optuna study is opened read-only")

    def release(self) -> None:
        pass


def study_storage(path: str | Path, *, read_only: bool = False) -> JournalStorage:
    """An Optuna storage over the study journal at `path`.

    read_only: the file must exist, and every write is refused (the report opens a study it
    must never change, possibly in a copied or write-protected folder). Reading takes no
    lock and writes nothing; a write would have to take the lock, which refuses.
    """
    path = Path(path)
    if not read_only:
        return JournalStorage(JournalFileBackend(str(path)))
    if not path.is_file():  # the backend would create an empty file
        raise FileNotFoundError(f"no Optuna study at {path}")
    return JournalStorage(JournalFileBackend(str(path), lock_obj=_NoWrites(str(path))))


def find_study(experiment_dir: str | Path) -> Path | None:
    """The experiment's study file: optuna.journal, or an earlier version's optuna.db."""
    for name in (OPTUNA_JOURNAL, LEGACY_OPTUNA_DB):
        path = Path(experiment_dir) / name
        if path.is_file():
            return path
    return None


def open_stored_study(path: str | Path, study_name: str) -> optuna.Study:
    """`optuna.load_study` of a study file, read-only (a journal, or a legacy SQLite file
    opened in SQLite's own read-only mode)."""
    path = Path(path)
    if path.name == LEGACY_OPTUNA_DB:
        storage: Any = optuna.storages.RDBStorage(f"sqlite:///file:{path}?mode=ro&uri=true")
    else:
        storage = study_storage(path, read_only=True)
    return optuna.load_study(study_name=study_name, storage=storage)


__all__ = ["find_study", "open_stored_study", "study_storage"]
