"""TensorBoard HParams: every run declares its hyperparameters when training starts.

The event files fit() writes are read back with TensorBoard's own event processing and the
HParams plugin's metadata parser (and, for a whole folder of runs, the plugin itself), so a
run that ASHA stops after one epoch still appears in the HParams table, without extra
scalar points and without a second run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from timesclip.tensorboard import HPARAM_METRICS
from timesclip.train import fit

#: Language only: the vision branch has nothing to do with TensorBoard and costs seconds.
FAST = {"use_vision": False, "use_contrastive": False}
EXPERIMENT_TAG = "_hparams_/experiment"
SESSION_TAG = "_hparams_/session_start_info"


def read_run(run_dir: Path):
    """(accumulator, experiment proto, session start proto) of one run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(content[EXPERIMENT_TAG]) \
        if EXPERIMENT_TAG in content else None
    session = metadata.parse_session_start_info_plugin_data(content[SESSION_TAG]) \
        if SESSION_TAG in content else None
    return acc, experiment, session


def _values(session) -> dict:
    out = {}
    for name, value in session.hparams.items():
        kind = value.WhichOneof("kind")
        out[name] = getattr(value, kind)
    return out


def test_session_written_at_start_with_the_given_hparams(small_bundle, tiny_config, tmp_path):
    run = tmp_path / "t0007-run"
    hparams = {"trial_id": "t0007", "lr": 2e-3, "use_contrastive": True,
               "temperature": None, "batch_size": 16}

    class Stopped(Exception):
        """What ASHA does to a trial: it never reaches the end of fit()."""

    def stop_after_first(epoch, metrics, checkpoint):
        raise Stopped

    with pytest.raises(Stopped):
        fit(tiny_config.replace(epochs=3, **FAST), small_bundle, tb_dir=run, hparams=hparams,
            report=stop_after_first, evaluate_test=False)
    acc, experiment, session = read_run(run)
    assert session is not None and experiment is not None
    assert _values(session) == {"trial_id": "t0007", "lr": pytest.approx(2e-3),
                                "use_contrastive": "True", "batch_size": 16.0}
    # the experiment names every parameter, also the one inactive in this run, typed from
    # the TrainConfig field, so every trial of a search describes the same columns
    infos = {info.name: info.type for info in experiment.hparam_infos}
    from tensorboard.plugins.hparams import api_pb2

    assert infos == {"trial_id": api_pb2.DATA_TYPE_STRING,
                     "lr": api_pb2.DATA_TYPE_FLOAT64,
                     "use_contrastive": api_pb2.DATA_TYPE_STRING,
                     "temperature": api_pb2.DATA_TYPE_FLOAT64,
                     "batch_size": api_pb2.DATA_TYPE_FLOAT64}
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAM_METRICS)
    # the metrics point at scalars fit() logs anyway: one point per epoch, nothing extra
    for tag in HPARAM_METRICS:
        assert [e.step for e in acc.Scalars(tag)] == [1], tag
    assert [p for p in run.iterdir() if p.is_dir()] == []  # no second run directory


def test_default_hparams_are_the_whole_config(small_bundle, tiny_config, tmp_path):
    config = tiny_config.replace(epochs=1, **FAST)
    fit(config, small_bundle, tb_dir=tmp_path / "tb", evaluate_test=False)
    _, experiment, session = read_run(tmp_path / "tb")
    values = _values(session)
    assert values["lr"] == pytest.approx(config.lr)
    assert values["backbone"] == "tiny" and values["use_vision"] == "False"
    assert values["batch_size"] == config.batch_size
    # None fields (e.g. test_year) are left out; lists are stored as text
    assert "test_year" not in values
    names = {info.name for info in experiment.hparam_infos}
    assert {"lr", "backbone", "contrastive_weight", "temperature"} <= names


def test_trial_hparams_cover_every_sampled_name():
    from tuner.spaces import load_space
    from tuner.trainable import TrialSetup, trial_hparams

    space = load_space("quick")

    def setup_of(kind: str) -> TrialSetup:
        return TrialSetup(kind=kind, space=space, base_config={}, metric="val_rmse",
                          cpus_per_trial=1, feature_key="", experiment="/tmp/x")

    setup = setup_of("search")
    params = {"trial_id": "t0003", "use_contrastive": False, "lr": 1e-3}
    out = trial_hparams(params, setup)
    assert list(out) == ["trial_id", *space.sampled_names()]
    assert out["trial_id"] == "t0003" and out["lr"] == 1e-3
    assert out["temperature"] is None and out["contrastive_weight"] is None
    ablation = trial_hparams({"trial_id": "t0001", "ablation": "E3", "seed": 1},
                             setup_of("ablation"))
    assert ablation == {"trial_id": "t0001", "ablation": "E3", "seed": 1}


def hparams_table(logdir: Path) -> tuple[dict, list[dict]]:
    """What TensorBoard's HParams tab shows for `tensorboard --logdir logdir`: the plugin's
    /experiment and /session_groups answers (the real plugin over the real event files)."""
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import hparams_plugin
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    context = base_plugin.TBContext(logdir=str(logdir), data_provider=provider,
                                    multiplexer=mux)
    apps = hparams_plugin.HParamsPlugin(context).get_plugin_apps()

    def post(route: str, body: dict) -> dict:
        client = Client(apps[route], Response)
        answer = client.post(route, data=json.dumps(body),
                             content_type="application/json")
        assert answer.status_code == 200, answer.get_data(as_text=True)
        return json.loads(answer.get_data(as_text=True))

    experiment = post("/experiment", {"experimentName": ""})
    groups = post("/session_groups", {
        "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS",
                                                  "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [{"hparam": h["name"]} for h in experiment.get("hparamInfos", [])]
        + [{"metric": m["name"]} for m in experiment.get("metricInfos", [])],
        "startIndex": 0, "sliceSize": 1000})
    return experiment, groups.get("sessionGroups", [])


def test_one_table_for_a_folder_of_runs(small_bundle, tiny_config, tmp_path):
    """Two 'trials' with different active parameters: one HParams table with a column for
    every parameter and one row per run, its metrics read from the scalars."""
    runs = tmp_path / "trials"
    fit(tiny_config.replace(epochs=1, **FAST), small_bundle, tb_dir=runs / "t0000-lr",
        hparams={"trial_id": "t0000", "use_contrastive": False, "lr": 1e-3,
                 "temperature": None}, evaluate_test=False)
    fit(tiny_config.replace(epochs=2, temperature=0.2, **FAST), small_bundle,
        tb_dir=runs / "t0001-temp", evaluate_test=False,
        hparams={"trial_id": "t0001", "use_contrastive": True, "lr": 2e-3,
                 "temperature": 0.2})
    experiment, groups = hparams_table(runs)
    assert {h["name"] for h in experiment["hparamInfos"]} == {"trial_id", "use_contrastive",
                                                              "lr", "temperature"}
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == list(HPARAM_METRICS)
    rows = {g["hparams"]["trial_id"]: g for g in groups}
    assert sorted(rows) == ["t0000", "t0001"]
    assert "temperature" not in rows["t0000"]["hparams"]
    assert rows["t0001"]["hparams"]["temperature"] == pytest.approx(0.2)
    for g in groups:  # the metric values come from the runs' own Metrics/RMSE scalars
        tags = {m["name"]["tag"] for m in g["metricValues"]}
        assert "Metrics/RMSE" in tags, g
