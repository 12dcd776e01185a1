"""The driver-side pieces that keep the journal: a ledger, searchers, schedulers, callbacks.

Ray Tune runs the trials; Optuna samples; ASHA decides. The subclasses here add one thing
to each: before the search acts on an event, the event is in `journal.jsonl` (see
`tuner.journal` for why that makes a killed driver harmless). They also give every trial a
stable id (`t0000`, `t0001`, ...) that survives a restart of the driver, while Ray's own
trial ids change with every driver run. One module each: `ledger`, `searchers`,
`schedulers`, `callbacks`.
"""

from tuner.tracking.callbacks import InterruptStopper, JournalCallback, TrialProgress
from tuner.tracking.ledger import Ledger
from tuner.tracking.schedulers import JournaledASHA, JournaledFIFO
from tuner.tracking.searchers import FixedTrialsSearcher, JournaledOptunaSearch, Replay

__all__ = ["FixedTrialsSearcher", "InterruptStopper", "JournalCallback", "JournaledASHA",
           "JournaledFIFO", "JournaledOptunaSearch", "Ledger", "Replay", "TrialProgress"]
