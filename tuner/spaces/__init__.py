"""Declarative YAML search spaces -> an Optuna define-by-run sampler.

A researcher describes a search in a small YAML file (search_spaces/*.yaml, documented in
search_spaces/README.md) instead of Python: which TrainConfig fields to sample, from which
distribution, under which condition, and with what budget. `load_space` reads such a file,
rejects every mistake it can detect before a cluster is booked (one line naming the file
and the key), and returns a `SearchSpace` whose `define_by_run` Ray Tune's OptunaSearch
calls per trial.

- `model`: SearchSpace and ParamSpec, sampling, trial configs, pair labels;
- `schema`: the file's sections as pydantic models;
- `load`: finding and reading a file, the rules between its keys;
- `budget`: Budget and Resources and their ONE validator each (`check_budget`,
  `check_resources`), shared by the space file and the command-line flags.
"""

from tuner.spaces.budget import (
    MAX_STARTUP_TRIALS,
    Budget,
    Resources,
    check_budget,
    check_resources,
    startup_rule,
)
from tuner.spaces.load import list_spaces, load_space, parse_space
from tuner.spaces.model import ParamSpec, SearchSpace
from tuner.spaces.schema import PARAMETER_TYPES

__all__ = ["MAX_STARTUP_TRIALS", "PARAMETER_TYPES", "Budget", "ParamSpec", "Resources",
           "SearchSpace", "check_budget", "check_resources", "list_spaces", "load_space",
           "parse_space", "startup_rule"]
