"""YAML search spaces: loading, define-by-run sampling, trial configs and every error path."""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
import zlib
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.samplers import TPESampler

from timesclip.config import ABLATIONS, TrainConfig
from timesclip.errors import ConfigError
from timesclip.metrics import METRIC_MODES
from tuner.spaces import (
    ParamSpec,
    Resources,
    SearchSpace,
    check_budget,
    check_resources,
    list_spaces,
    load_space,
)
from tuner.spaces.model import same

optuna.logging.set_verbosity(optuna.logging.WARNING)

FIELDS = set(TrainConfig.field_names())


def _run_asks(space: SearchSpace, n: int, seed: int = 0) -> list[tuple[dict, dict]]:
    """Ask/tell a real TPE study n times; returns (optuna params, constants) per trial.

    Telling an objective makes TPE leave its random start-up phase, so the conditional
    logic is exercised under the model-based sampler too.
    """
    study = optuna.create_study(sampler=TPESampler(seed=seed, n_startup_trials=5))
    out = []
    for _ in range(n):
        trial = study.ask()
        constants = space.define_by_run(trial) or {}
        params = dict(trial.params)
        out.append((params, constants))
        # crc32, not hash(): str hashes change per process (PYTHONHASHSEED)
        study.tell(trial, sum(zlib.crc32(str(v).encode()) % 97 for v in params.values()) / 97.0)
    return out


def _within(spec: ParamSpec, value: Any) -> bool:
    if spec.type in ("loguniform", "uniform"):
        return isinstance(value, float) and spec.low <= value <= spec.high
    if spec.type == "int":
        return isinstance(value, int) and spec.low <= value <= spec.high
    if spec.is_pair:
        return value in spec.labels()
    return value in spec.choices


# ---------------------------------------------------------------------------- bundled spaces
def test_bundled_spaces_are_listed_and_load() -> None:
    names = list_spaces()
    assert {"full", "quick", "ablation"} <= set(names)
    for name in names:
        space = load_space(name)
        assert space.name == name
        assert space.path.is_file() and space.path.suffix == ".yaml"
        assert space.description
        assert space.budget.grace_period <= space.budget.max_epochs
        assert set(space.sampled_names()) <= FIELDS


def test_full_space_matches_the_agreed_budget() -> None:
    space = load_space("full")
    b, r = space.budget, space.resources
    assert (b.num_samples, b.max_epochs, b.grace_period, b.reduction_factor) == (64, 100, 5, 3)
    assert (b.metric, b.mode, b.max_concurrent) == ("val_rmse", "min", 8)
    assert (r.cpus_per_trial, r.gpus_per_trial) == (4, 0.25)
    names = [p.name for p in space.parameters]
    assert names[0] == "use_contrastive"
    by_name = {p.name: p for p in space.parameters}
    assert by_name["contrastive_weight"].log and by_name["contrastive_weight"].low == 1e-3
    assert by_name["backbone_lr"].condition == {"field": "freeze_text", "equals": False}
    assert by_name["patch"].fields == ["patch_length", "stride"]
    # 1e-3 is a *string* to YAML 1.1; the loader must have made it a number
    assert all(isinstance(p.low, float) for p in space.parameters if p.type == "loguniform")


def test_quick_space_is_a_cpu_demo() -> None:
    space = load_space("quick")
    assert space.base["backbone"] == "tiny"
    assert space.resources.gpus_per_trial == 0
    assert (space.budget.num_samples, space.budget.max_epochs) == (8, 6)
    assert {"contrastive_weight", "temperature", "hybrid_alpha", "lr"} <= set(
        space.sampled_names())


def test_load_space_by_path(tmp_path: Path) -> None:
    src = load_space("quick").path
    dst = tmp_path / "mine.yaml"
    dst.write_text(src.read_text())
    space = load_space(str(dst))
    assert space.name == "mine" and space.path == dst
    assert space.budget == load_space("quick").budget


def test_unknown_space_name_lists_bundled() -> None:
    with pytest.raises(ConfigError) as info:
        load_space("fulll")
    msg = str(info.value)
    assert msg.startswith("unknown search space 'fulll'; bundled spaces: ")
    # Every bundled file is named, in order, whatever set ships.
    assert {"ablation", "forecast", "full", "quick"} <= set(list_spaces())
    assert f"bundled spaces: {', '.join(list_spaces())};" in msg
    assert "path to a YAML file" in msg
    with pytest.raises(ConfigError, match="not found"):
        load_space("does/not/exist.yaml")


# ---------------------------------------------------------------------------- sampling
#: Random start-up trials of each TPE study in the conditional-logic test.
STARTUP = 20


def _branches(params: dict) -> set[str]:
    """Which side of each condition of the full space a trial took."""
    taken = {"text frozen" if params["freeze_text"] else "text fine-tuned"}
    if not params["use_contrastive"]:
        taken.add("contrastive off")
    elif "hybrid_alpha" in params:
        taken |= {"contrastive on", "hybrid_alpha sampled"}
    else:
        taken |= {"contrastive on", "contrastive on, not hybrid"}
    return taken


def test_define_by_run_respects_bounds_and_conditions() -> None:
    """Every trial obeys bounds and the (chained) conditions, and each branch of each
    condition is taken both in TPE's random start-up and in its model-based phase.

    A TPE study concentrates on whatever scores best, so one study rarely keeps proposing
    every branch after its start-up phase. Each study here rewards one set of branches and
    runs until its model-based phase proposes them: together the studies reach every
    branch under the model, deterministically (seeded) and whatever TPE's version.
    """
    space = load_space("full")
    specs = {p.name: p for p in space.parameters}
    targets = [{"contrastive on", "hybrid_alpha sampled", "text fine-tuned"},
               {"contrastive off", "text frozen"},
               {"contrastive on", "contrastive on, not hybrid"}]
    seen: dict[str, set[str]] = {"random": set(), "model": set()}
    for seed, target in enumerate(targets):
        study = optuna.create_study(sampler=TPESampler(seed=seed, n_startup_trials=STARTUP))
        for _ in range(STARTUP + 100):
            trial = study.ask()
            constants = space.define_by_run(trial) or {}
            params = dict(trial.params)
            for name, value in params.items():
                assert name in specs, name
                assert _within(specs[name], value), (name, value)
            contrastive = params["use_contrastive"]
            for name in ("contrastive_weight", "temperature", "learnable_temperature",
                         "contrastive_mode"):
                assert (name in params) == contrastive, (name, params)
            # hybrid_alpha: only with contrastive on AND mode hybrid (chained condition)
            assert ("hybrid_alpha" in params) == (params.get("contrastive_mode") == "hybrid")
            assert ("backbone_lr" in params) == (params["freeze_text"] is False)
            # the pair label comes back expanded as constants, consistent with the label
            patch_length, stride = (int(v) for v in params["patch"].split("/"))
            assert constants == {"patch_length": patch_length, "stride": stride}
            assert stride <= patch_length

            taken = _branches(params)
            model_phase = trial.number >= STARTUP
            seen["model" if model_phase else "random"] |= taken
            # 0 for the rewarded branches, a deterministic crc32 tie-breaker in [0, 0.1)
            crcs = [zlib.crc32(str(v).encode()) % 97 for v in params.values()]
            study.tell(trial, len(target - taken) + 0.1 * sum(crcs) / (97.0 * len(crcs)))
            if model_phase and target <= taken:
                break
        assert target <= seen["model"], (target, seen["model"])
    wanted = set().union(*targets)
    assert seen["random"] == wanted, seen["random"]
    assert seen["model"] == wanted, seen["model"]


def test_trial_config_is_a_valid_trainconfig() -> None:
    space = load_space("full")
    base = space.base_config(TrainConfig(seed=7, input_steps=12, patience=4, epochs=3))
    assert (base.patience, base.epochs) == (space.base["patience"], space.budget.max_epochs)
    for params, constants in _run_asks(space, 15, seed=1):
        cfg = space.trial_config(base, {**params, **constants})
        assert cfg.epochs == space.budget.max_epochs
        assert cfg.patience == space.base["patience"]
        assert cfg.seed == 7  # from base_config, untouched by the space
        assert f"{cfg.patch_length}/{cfg.stride}" == params["patch"]
        for name, value in params.items():
            if name != "patch":
                assert getattr(cfg, name) == value
        # only the label (what OptunaSearch captured) is enough too
        assert space.trial_config(base, params) == cfg


def test_trial_config_precedence_and_errors() -> None:
    space = load_space("quick")
    below = TrainConfig(backbone="openai/clip-vit-base-patch16", lr=5e-4, epochs=50)
    base = space.base_config(below)
    assert base.backbone == "tiny"  # the space's base beats --config
    assert base.epochs == space.budget.max_epochs  # epochs follows the budget
    cfg = space.trial_config(base, {"temperature": 0.2})
    assert cfg.lr == 5e-4 and cfg.temperature == 0.2 and cfg.backbone == "tiny"
    # the caller's base is complete: trial_config never re-applies the space's base, so a
    # flag merged into it (here --backbone my/dir) stays; only sampled values beat it
    flagged = base.replace(backbone="my/dir", lr=2e-4)
    cfg = space.trial_config(flagged, {"lr": 1e-3})
    assert cfg.backbone == "my/dir" and cfg.lr == 1e-3
    assert cfg.epochs == space.budget.max_epochs and cfg.patience == space.base["patience"]
    with pytest.raises(ConfigError, match="unknown key 'lrr'.*did you mean 'lr'"):
        space.trial_config(base, {"lrr": 1e-3})
    with pytest.raises(ConfigError, match="epochs cannot be sampled: it follows budget"):
        space.trial_config(base, {"epochs": 3})
    full = load_space("full")
    with pytest.raises(ConfigError, match="patch='5/5' is not one of"):
        full.trial_config(TrainConfig(), {"patch": "5/5"})
    with pytest.raises(ConfigError, match="disagrees"):
        full.trial_config(TrainConfig(), {"patch": "6/3", "stride": 2})
    assert full.trial_config(TrainConfig(), {"patch": [4, 2]}).patch_length == 4
    with pytest.raises(ConfigError, match="dropout"):
        full.trial_config(TrainConfig(), {"dropout": 1.5})


def test_optuna_search_integration_and_pickle(tmp_path: Path) -> None:
    """Ray's OptunaSearch merges the returned constants into the trial config."""
    from ray.tune.search.optuna import OptunaSearch

    space = pickle.loads(pickle.dumps(load_space("full")))  # searcher checkpoints pickle it
    searcher = OptunaSearch(space=space.define_by_run, metric="val_rmse", mode="min",
                            sampler=TPESampler(seed=0))
    config = searcher.suggest("t0")
    assert "patch" in config and config["patch_length"] == int(config["patch"].split("/")[0])
    cfg = space.trial_config(space.base_config(), config)
    assert cfg.stride == int(config["patch"].split("/")[1])
    searcher.on_trial_complete("t0", {"val_rmse": 1.0})
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = OptunaSearch()
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("t1")["patch"] in ("6/3", "4/2", "3/3")


def test_fixed_parameters_are_returned_as_constants(tmp_path: Path) -> None:
    doc = _search_doc()
    doc["parameters"]["grad_clip"] = {"type": "fixed", "value": 0.5}
    doc["parameters"]["head_hidden"] = {"type": "int", "low": 16, "high": 64, "step": 16}
    space = load_space(str(_write(tmp_path, doc)))
    for params, constants in _run_asks(space, 10):
        assert set(constants) == {"grad_clip", "patch_length", "stride"}
        assert constants["grad_clip"] == 0.5
        assert "grad_clip" not in params and params["head_hidden"] in (16, 32, 48, 64)
        cfg = space.trial_config(space.base_config(), {**params, **constants})
        assert cfg.grad_clip == 0.5 and cfg.head_hidden == params["head_hidden"]
    assert "grad_clip" in space.sampled_names()


def test_condition_with_in_and_base(tmp_path: Path) -> None:
    doc = _search_doc()
    doc["base"]["use_vision"] = True
    doc["parameters"] = {
        "contrastive_mode": {"type": "choice", "choices": ["variate", "global", "hybrid"]},
        "hybrid_alpha": {"type": "uniform", "low": 0.0, "high": 1.0,
                         "condition": {"field": "contrastive_mode", "in": ["hybrid", "global"]}},
        "temperature": {"type": "loguniform", "low": 0.01, "high": 0.5,
                        "condition": {"field": "use_vision", "equals": True}},
    }
    space = load_space(str(_write(tmp_path, doc)))
    for params, _ in _run_asks(space, 30):
        assert ("hybrid_alpha" in params) == (params["contrastive_mode"] != "variate")
        assert "temperature" in params


def test_ablation_grid_and_configs() -> None:
    space = load_space("ablation")
    grid = space.ablation_grid()
    assert space.arms == ["E1", "E2", "E3", "E4", "E5"] and space.seeds == [0, 1, 2]
    assert len(grid) == len(space.arms) * len(space.seeds) == space.budget.num_samples
    assert space.budget.grace_period == space.budget.max_epochs
    assert grid[0] == {"ablation": "E1", "seed": 0}
    for entry in grid:
        cfg = space.trial_config(space.base_config(TrainConfig(epochs=7)), entry)
        assert cfg.ablation_id == entry["ablation"] and cfg.seed == entry["seed"]
        assert cfg.epochs == 100
    with pytest.raises(ConfigError, match="ablation grid"):
        space.define_by_run(optuna.create_study().ask())
    with pytest.raises(ConfigError, match="not an ablation"):
        load_space("full").ablation_grid()
    assert set(space.sampled_names()) == set(ABLATIONS["E1"]) | {"seed"}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _sourced(path: Path | str, section: str, flags: set[str]):
    """where() as a caller that merges flags into the file's values names each key: the
    flag for a key given on the command line, the file's key otherwise."""
    return lambda key: _flag(key) if key in flags else f"{path}: {section}.{key}"


def test_check_budget_merges_command_line_values() -> None:
    quick = load_space("quick")
    raw = {**dataclasses.asdict(quick.budget), "max_epochs": 3, "num_samples": 2}
    budget = check_budget(raw, kind="search", grid_size=0,
                          where=_sourced(quick.path, "budget", {"max_epochs", "num_samples"}))
    assert (budget.max_epochs, budget.num_samples, budget.grace_period) == (3, 2, 1)
    assert quick.budget.max_epochs == 6  # the space is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        budget.max_epochs = 5  # type: ignore[misc]
    full = load_space("full")
    with pytest.raises(ConfigError, match=r"budget\.grace_period: grace_period \(5\) must be "
                                          r"<= max_epochs \(3\)"):
        check_budget({**dataclasses.asdict(full.budget), "max_epochs": 3}, kind="search",
                     grid_size=0, where=_sourced(full.path, "budget", {"max_epochs"}))
    with pytest.raises(ConfigError, match=r"^--max-epoch: not a key of a search budget "
                                          r"\(did you mean 'max_epochs'\?\)"):
        check_budget({**raw, "max_epoch": 3}, kind="search", grid_size=0,
                     where=_sourced(quick.path, "budget", {"max_epoch"}))


def test_check_budget_of_an_ablation() -> None:
    """An ablation's grid sets num_samples, and grace_period follows max_epochs (arms are
    never pruned) unless it is given, when it must equal max_epochs."""
    where = _sourced("ablation.yaml", "budget", {"max_epochs"})
    budget = check_budget({"max_epochs": 4}, kind="ablation", grid_size=15, where=where)
    assert (budget.num_samples, budget.grace_period, budget.reduction_factor) == (15, 4, 2)
    assert (budget.metric, budget.mode) == ("val_rmse", "min")
    with pytest.raises(ConfigError, match=r"^--num-samples: an ablation runs arms x seeds = "
                                          r"15 trials"):
        check_budget({"max_epochs": 4, "num_samples": 3}, kind="ablation", grid_size=15,
                     where=_sourced("a.yaml", "budget", {"num_samples"}))
    with pytest.raises(ConfigError, match=r"^a\.yaml: budget\.grace_period: an ablation runs "
                                          r"every arm to the end \(no pruning\); set it to "
                                          r"max_epochs \(4\)"):
        check_budget({"max_epochs": 4, "grace_period": 100}, kind="ablation", grid_size=15,
                     where=_sourced("a.yaml", "budget", {"max_epochs"}))


def test_every_metric_of_the_trainer_with_its_direction() -> None:
    """The search's metrics and modes are timesclip.metrics' (one owner of the names)."""
    for metric, mode in METRIC_MODES.items():
        budget = check_budget({"max_epochs": 2, "metric": metric}, kind="ablation",
                              grid_size=1, where=lambda key: key)
        assert budget.mode == mode
        wrong = "max" if mode == "min" else "min"
        with pytest.raises(ConfigError, match=f"^mode: {metric} is better when .*; use mode: "
                                              f"{mode}$"):
            check_budget({"max_epochs": 2, "metric": metric, "mode": wrong}, kind="ablation",
                         grid_size=1, where=lambda key: key)


#: (section, key, bad value, text of the rule) for every rule of a budget or a resource; an
#: ablation's rules are tested on the ablation document.
SOURCED_RULES = [
    ("budget", "num_samples", 0, "must be >= 1, got 0"),
    ("budget", "max_epochs", 0, "must be >= 1, got 0"),
    ("budget", "grace_period", 0, "must be >= 1, got 0"),
    ("budget", "grace_period", 11, "grace_period (11) must be <= max_epochs (10)"),
    ("budget", "max_concurrent", 0, "must be >= 1, got 0"),
    ("budget", "startup_trials", 0, "must be >= 1, got 0"),
    ("budget", "num_samples", 2.5, "expected an integer, got 2.5"),
    ("budget", "num_samples", True, "expected an integer, got True"),
    ("budget", "reduction_factor", 1, "must be > 1, got 1"),
    ("budget", "reduction_factor", float("inf"), "expected a finite number, got inf"),
    ("budget", "metric", "rmse", "unknown metric 'rmse'; one of val_rmse"),
    ("budget", "mode", "up", "must be 'min' or 'max', got 'up'"),
    ("resources", "cpus_per_trial", 0, "must be > 0, got 0"),
    ("resources", "gpus_per_trial", -1, "must be >= 0, got -1"),
    ("resources", "gpus_per_trial", 1.5, "Ray shares a GPU only in fractions below 1; above "
                                         "1 use a whole number, got 1.5"),
]


@pytest.mark.parametrize("section,key,value,text", SOURCED_RULES,
                         ids=[f"{c[1]}={c[2]}" for c in SOURCED_RULES])
def test_a_rule_refuses_a_file_value_and_a_flag_value_alike(
        tmp_path: Path, section: str, key: str, value: Any, text: str) -> None:
    """One validator: the value refused in a space file is refused as a command-line flag
    by the same rule, and the message names where the value came from."""
    doc = _search_doc()
    doc[section][key] = value
    path = _write(tmp_path, doc)
    with pytest.raises(ConfigError) as from_file:
        load_space(str(path))
    assert str(from_file.value).startswith(f"{path}: {section}.{key}: "), from_file.value
    assert text in str(from_file.value)

    raw = _search_doc()[section]
    where = _sourced(path, section, {key})
    with pytest.raises(ConfigError) as from_flag:
        if section == "budget":
            check_budget({**raw, key: value}, kind="search", grid_size=0, where=where)
        else:
            check_resources({**raw, key: value}, where=where)
    assert str(from_flag.value).startswith(f"{_flag(key)}: "), from_flag.value
    # the same rule, word for word, whatever the source
    assert str(from_flag.value).removeprefix(f"{_flag(key)}: ") == \
        str(from_file.value).removeprefix(f"{path}: {section}.{key}: ")


def test_resources_defaults_and_whole_gpus() -> None:
    assert check_resources({}, where=lambda key: key) == Resources(cpus_per_trial=1,
                                                                    gpus_per_trial=0)
    assert check_resources({"gpus_per_trial": 2, "cpus_per_trial": "0.5"},
                           where=lambda key: key).gpus_per_trial == 2
    assert check_resources({"gpus_per_trial": 0.25}, where=lambda key: key).gpus_per_trial \
        == 0.25


#: A value written in a space's base and in a --config file (or as a flag's text) means the
#: same thing: (field, value as YAML reads it, the value of the field).
SAME_VALUE = [
    ("weight_decay", "1e-3", 1e-3),  # YAML 1.1 reads 1e-3 (no dot) as a string
    ("weight_decay", 0, 0.0),
    ("patience", "7", 7),
    ("patience", 7.0, 7),
    ("freeze_text", "false", False),
    ("freeze_text", "No", False),
    ("bands", "ndvi, red", ["ndvi", "red"]),  # the --bands form
    ("bands", ["ndvi", "red"], ["ndvi", "red"]),
    ("test_year", None, None),
    ("monitor", None, None),
]
#: ... and a value refused by both, with the same words: (field, value, text).
SAME_REFUSAL = [
    ("patience", 2.5, "patience must be an integer, got 2.5"),
    ("freeze_text", 1, "freeze_text must be true or false, got 1"),
    ("freeze_text", "maybe", "freeze_text must be true or false, got 'maybe'"),
    ("weight_decay", float("inf"), "weight_decay must be a finite number, got inf"),
    ("weight_decay", True, "weight_decay must be a finite number, got True"),
    ("weight_decay", None, "weight_decay cannot be null"),
    ("backbone", 5, "backbone must be a string (quote it in YAML), got 5"),
    ("bands", ["ndvi", 2], "bands must be a list of names or a comma-separated string"),
]


def test_a_value_means_the_same_in_a_space_and_a_config(tmp_path: Path) -> None:
    """One reader (timesclip.config.coerce_field) for space values, --config and flags."""
    for name, written, meant in SAME_VALUE:
        doc = _search_doc()
        doc["base"][name] = written
        space = load_space(str(_write(tmp_path, doc)))
        config = TrainConfig.from_dict({name: written}, source="cfg")
        assert same(space.base[name], meant) and same(getattr(config, name), meant), name
        assert same(getattr(space.base_config(), name), meant)
    for name, written, text in SAME_REFUSAL:
        doc = _search_doc()
        doc["base"][name] = written
        path = _write(tmp_path, doc)
        with pytest.raises(ConfigError) as in_space:
            load_space(str(path))
        with pytest.raises(ConfigError) as in_config:
            TrainConfig.from_dict({name: written}, source="cfg")
        assert str(in_space.value).startswith(f"{path}: base.{name}: {text}"), in_space.value
        assert str(in_space.value).removeprefix(f"{path}: base.{name}: ") == \
            str(in_config.value).removeprefix("cfg: "), name
        assert text in str(in_config.value)


def test_numbers_written_plainly_in_a_space_file(tmp_path: Path) -> None:
    """YAML 1.1 reads 1e-3 and 1e3 as text; bounds, choices and budget take them as numbers."""
    path = tmp_path / "plain.yaml"
    path.write_text("description: plain numbers\nkind: search\n"
                    "budget: {num_samples: 2, max_epochs: 10, grace_period: 1, "
                    "reduction_factor: 2}\n"
                    "parameters:\n"
                    "  lr: {type: loguniform, low: 1e-5, high: 1e-3}\n"
                    "  weight_decay: {type: choice, choices: [0, 1e-4]}\n")
    space = load_space(str(path))
    assert yaml.safe_load(path.read_text())["parameters"]["lr"]["low"] == "1e-5"
    lr, wd = space.parameters
    assert (lr.low, lr.high, wd.choices) == (1e-5, 1e-3, [0.0, 1e-4])
    assert space.budget.max_epochs == 10


# ---------------------------------------------------------------------------- invalid files
def _search_doc() -> dict[str, Any]:
    return {
        "description": "test space",
        "kind": "search",
        "budget": {"num_samples": 4, "max_epochs": 10, "grace_period": 2,
                   "reduction_factor": 2, "metric": "val_rmse", "mode": "min",
                   "max_concurrent": 1},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
        "base": {"patience": 3},
        "parameters": {
            "use_contrastive": {"type": "choice", "choices": [True, False]},
            "contrastive_weight": {"type": "loguniform", "low": "1e-3", "high": 1.0,
                                   "condition": {"field": "use_contrastive",
                                                 "equals": True}},
            "lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
            "patch": {"type": "choice", "fields": ["patch_length", "stride"],
                      "choices": [[6, 3], [4, 2]]},
        },
    }


def _ablation_doc() -> dict[str, Any]:
    return {
        "description": "test ablation",
        "kind": "ablation",
        "ablation": {"arms": ["E1", "E4"], "seeds": [0, 1]},
        "budget": {"max_epochs": 5, "grace_period": 5, "metric": "val_rmse", "mode": "min"},
    }


def _write(tmp_path: Path, doc: dict[str, Any], name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_the_valid_test_documents_load(tmp_path: Path) -> None:
    space = load_space(str(_write(tmp_path, _search_doc())))
    assert space.parameters[1].low == 1e-3
    assert len(load_space(str(_write(tmp_path, _ablation_doc(), "a.yaml"))).ablation_grid()) == 4


def _set(doc: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        doc = doc[key]
    if value is _DELETE:
        del doc[last]
    else:
        doc[last] = value


_DELETE = object()
P = "parameters"

INVALID_SEARCH = [
    # (id, edits, key that must be named, other text the message must contain)
    ("unknown-param", {f"{P}.contrastive_wieght": {"type": "uniform", "low": 0, "high": 1}},
     "parameters.contrastive_wieght", "did you mean 'contrastive_weight'"),
    ("low>high", {f"{P}.lr.low": 1e-2}, "parameters.lr.low", "greater than high"),
    ("loguniform-low<=0", {f"{P}.lr.low": 0.0}, "parameters.lr.low", "low > 0"),
    ("empty-choices", {f"{P}.use_contrastive.choices": []},
     "parameters.use_contrastive.choices", "non-empty"),
    ("unknown-type", {f"{P}.lr.type": "lognormal"}, "parameters.lr.type", "unknown type"),
    ("missing-type", {f"{P}.lr.type": _DELETE}, "parameters.lr.type", "missing"),
    ("missing-low", {f"{P}.lr.low": _DELETE}, "parameters.lr",
     "missing required key low (a loguniform parameter needs low, high)"),
    ("param-key-typo", {f"{P}.lr.hihg": 1}, "parameters.lr.hihg", "did you mean 'high'"),
    ("step-on-float", {f"{P}.lr.step": 1}, "parameters.lr.step", "not a key"),
    ("cond-unknown-field", {f"{P}.lr.condition": {"field": "use_contrast", "equals": True}},
     "parameters.lr.condition.field", "did you mean 'use_contrastive'"),
    ("cond-later-param", {f"{P}.use_contrastive.condition": {"field": "lr", "equals": 1}},
     "parameters.use_contrastive.condition.field", "set by a later parameter"),
    ("cond-never-sampled", {f"{P}.contrastive_weight.condition":
                            {"field": "use_contrastive", "in": [False]},
                            f"{P}.use_contrastive.choices": [True]},
     "parameters.contrastive_weight.condition.in", "never sampled"),
    ("cond-not-in-space", {f"{P}.lr.condition": {"field": "freeze_text", "equals": True}},
     "parameters.lr.condition.field", "not set by an earlier parameter or by base"),
    ("cond-unsampled-value",
     {f"{P}.contrastive_weight.condition": {"field": "use_contrastive", "equals": 1}},
     "parameters.contrastive_weight.condition.equals", "true or false"),
    ("cond-both", {f"{P}.contrastive_weight.condition":
                   {"field": "use_contrastive", "equals": True, "in": [True]}},
     "parameters.contrastive_weight.condition", "exactly one"),
    ("cond-never-in-base", {"base.use_vision": True, f"{P}.lr.condition":
                            {"field": "use_vision", "equals": False}},
     "parameters.lr.condition", "never holds"),
    ("missing-kind", {"kind": _DELETE}, "top level", "missing required key kind ("),
    ("missing-budget-key", {"budget.num_samples": _DELETE}, "budget",
     "missing required key num_samples ("),
    ("unknown-top-key", {"paramters": {}}, "paramters", "did you mean 'parameters'"),
    ("unknown-budget-key", {"budget.max_epoch": 3}, "budget.max_epoch",
     "did you mean 'max_epochs'"),
    ("wrong-type-choice", {f"{P}.batch_size":
                           {"type": "choice", "choices": [16, "big"]}},
     "parameters.batch_size.choices[1]", "integer"),
    ("wrong-type-bool", {f"{P}.use_contrastive.choices": ["maybe", "no"]},
     "parameters.use_contrastive.choices[0]", "true or false"),
    ("uniform-on-int", {f"{P}.d_model": {"type": "uniform", "low": 32, "high": 64}},
     "parameters.d_model.type", "use type int"),
    ("out-of-range-for-field", {f"{P}.dropout": {"type": "uniform", "low": 0.0, "high": 1.0}},
     "parameters.dropout.high", "dropout must be in [0, 1)"),
    ("base-wrong-type", {"base.patience": "soon"}, "base.patience", "integer"),
    ("base-unknown", {"base.patiense": 3}, "base.patiense", "did you mean 'patience'"),
    ("epochs-reserved", {"base.epochs": 3}, "base.epochs", "budget.max_epochs"),
    ("base-and-param", {"base.lr": 1e-4}, "parameters.lr", "also fixed in base"),
    ("pair-unknown-field", {f"{P}.patch.fields": ["patch_length", "strid"]},
     "parameters.patch.fields", "did you mean 'stride'"),
    ("pair-length", {f"{P}.patch.choices": [[6, 3], [4]]}, "parameters.patch.choices[1]",
     "2 values"),
    ("pair-invalid-combo", {f"{P}.patch.choices": [[6, 3], [3, 6]]},
     "parameters.patch.choices[1]", "stride (6) must be <= patch_length (3)"),
    ("pair-named-as-field", {f"{P}.stride": {"type": "choice", "fields":
                                             ["patch_length", "d_model"],
                                             "choices": [[6, 64]]}},
     "parameters.stride", "not a TrainConfig field"),
    ("pair-name-slash", {f"{P}.patch": _DELETE, f"{P}.patch/stride":
                         {"type": "choice", "fields": ["patch_length", "stride"],
                          "choices": [[6, 3]]}},
     "parameters.patch/stride", "plain identifier"),
    ("grace>max", {"budget.grace_period": 20}, "budget.grace_period",
     "must be <= max_epochs (10)"),
    ("reduction<=1", {"budget.reduction_factor": 1}, "budget.reduction_factor", "> 1"),
    ("num-samples-0", {"budget.num_samples": 0}, "budget.num_samples", ">= 1"),
    ("bad-metric", {"budget.metric": "rmse"}, "budget.metric", "val_rmse"),
    ("mode-mismatch", {"budget.metric": "val_r2"}, "budget.mode", "use mode: max"),
    ("max-concurrent-0", {"budget.max_concurrent": 0}, "budget.max_concurrent", ">= 1"),
    ("gpus-fraction>1", {"resources.gpus_per_trial": 1.5}, "resources.gpus_per_trial",
     "whole number"),
    ("cpus-0", {"resources.cpus_per_trial": 0}, "resources.cpus_per_trial", "> 0"),
    ("bad-kind", {"kind": "grid"}, "kind", "'search' or 'ablation'"),
    ("no-parameters", {P: _DELETE}, "parameters", "missing"),
]


@pytest.mark.parametrize("edits,key,text", [c[1:] for c in INVALID_SEARCH],
                         ids=[c[0] for c in INVALID_SEARCH])
def test_invalid_search_space(tmp_path: Path, edits: dict, key: str, text: str) -> None:
    _assert_invalid(tmp_path, _search_doc(), edits, key, text)


def _assert_invalid(tmp_path: Path, base_doc: dict, edits: dict, key: str, text: str) -> None:
    """Apply dotted-key edits to a valid space; loading must fail in one line naming the
    file and the key."""
    doc = copy.deepcopy(base_doc)
    for dotted, value in edits.items():
        _set(doc, dotted, value)
    path = _write(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        load_space(str(path))
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: "), msg
    assert f": {key}" in msg, msg
    assert text in msg, msg


INVALID_ABLATION = [
    ("unknown-arm", {"ablation.arms": ["E1", "E9"]}, "ablation.arms", "unknown arm 'E9'"),
    ("duplicate-arm", {"ablation.arms": ["E1", "e1"]}, "ablation.arms", "listed twice"),
    ("missing-seeds", {"ablation.seeds": _DELETE}, "ablation", "missing required key seeds"),
    ("bad-seeds", {"ablation.seeds": [0, "a"]}, "ablation.seeds[1]", "expected an integer"),
    ("pruning", {"budget.grace_period": 2}, "budget.grace_period", "no pruning"),
    ("num-samples", {"budget.num_samples": 3}, "budget.num_samples", "arms x seeds = 4"),
    ("parameters", {P: {"lr": {"type": "fixed", "value": 1e-3}}}, "parameters",
     "not allowed"),
    ("switch-in-base", {"base": {"use_vision": False}}, "base.use_vision", "ablation arms"),
]


@pytest.mark.parametrize("edits,key,text", [c[1:] for c in INVALID_ABLATION],
                         ids=[c[0] for c in INVALID_ABLATION])
def test_invalid_ablation_space(tmp_path: Path, edits: dict, key: str, text: str) -> None:
    _assert_invalid(tmp_path, _ablation_doc(), edits, key, text)


def test_all_missing_keys_of_a_section_in_one_message(tmp_path: Path) -> None:
    """A new space file is fixed in one edit: every missing key of a section is named."""
    cases = [
        # (dotted keys deleted, the section's location, the missing keys in order)
        (["budget.num_samples", "budget.grace_period", "budget.reduction_factor"], "budget",
         "num_samples, grace_period, reduction_factor"),
        ([f"{P}.lr.low", f"{P}.lr.high"], "parameters.lr", "low, high"),
        (["kind", "budget"], "top level", "kind, budget"),
    ]
    for deleted, where, listed in cases:
        doc = _search_doc()
        for dotted in deleted:
            _set(doc, dotted, _DELETE)
        path = _write(tmp_path, doc)
        with pytest.raises(ConfigError) as info:
            load_space(str(path))
        msg = str(info.value)
        assert "\n" not in msg
        assert msg.startswith(f"{path}: {where}: missing required keys {listed} ("), msg
    doc = _ablation_doc()
    del doc["ablation"]["arms"], doc["ablation"]["seeds"]
    with pytest.raises(ConfigError, match=r": ablation: missing required keys arms, seeds \("):
        load_space(str(_write(tmp_path, doc)))


def test_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: search\nbudget: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML at line \d+"):
        load_space(str(bad))
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping"):
        load_space(str(listy))


def test_every_sampled_float_is_finite_and_log_spread() -> None:
    """loguniform really samples on a log scale: several decades show up in 60 trials."""
    space = load_space("full")
    weights = [p["contrastive_weight"] for p, _ in _run_asks(space, 60, seed=3)
               if "contrastive_weight" in p]
    assert weights and all(math.isfinite(w) for w in weights)
    decades = {math.floor(math.log10(w)) for w in weights}
    assert len(decades) >= 2


# ------------------------------------------------------------------ TPE's start-up count
def test_startup_follows_the_budget_and_leaves_most_trials_to_the_model():
    """A quarter of the trials, at least 2, at most Optuna's 10: every budget we ship
    (6-8 in the tests and the quick demo, 24 in the benchmark, 64 in full) leaves at least
    three quarters of its trials to TPE's model."""
    from tuner.spaces import startup_rule

    assert [startup_rule(n) for n in (1, 4, 6, 8, 9, 24, 40, 64, 500)] == \
        [2, 2, 2, 2, 3, 6, 10, 10, 10]
    for n in (6, 8, 12, 24, 64):
        assert startup_rule(n) <= n / 4 + 1 and (n - startup_rule(n)) / n >= 0.66


def test_the_startup_count_is_resolved_after_the_flags(tmp_path):
    """The space's num_samples is not the search's when --num-samples overrides it: the
    rule is applied to the merged budget; a count the space file names is kept."""
    import dataclasses

    from tuner.spaces import check_budget

    space = load_space("quick")
    assert space.budget.startup_trials is None  # the file names none
    raw = {**dataclasses.asdict(space.budget), "num_samples": 64}
    merged = check_budget(raw, kind="search", grid_size=0, where=str).resolved()
    assert merged.startup_trials == 10
    explicit = check_budget({**raw, "startup_trials": 3}, kind="search", grid_size=0,
                            where=str).resolved()
    assert explicit.startup_trials == 3
