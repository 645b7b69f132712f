"""The run directory (more3s.run): run.json's RunInfo, the targets / caps / timestep table a run resolves, and loading
a run's model."""

import dataclasses
import json

import pytest
import torch

from more3s.model import ModelConfig
from more3s.run import (RUN_FORMAT, RunFormatError, RunInfo, RunPaths, default_targets, eval_cap, load_run_model,
                        timestep_table)
from more3s.run import main as run_main


def test_default_targets_published_vs_collected():
    from more3s.envs import get_task
    from more3s.report import behaviour_stats

    stats = behaviour_stats("breakout", [1.0, 5.0, 9.0], [1.0, 4.0, 8.0])
    task = get_task("breakout")
    collected = {"collected_by": "more3s", "policy": "mixed", "max_episode_steps": 400}
    # provenance decides, never the name (issue 10): a more3s collection gets the data's targets ...
    t, src = default_targets((), task, stats, collected)
    assert t[0] == 8.0 and "from the data" in src and "90" in src
    t, _ = default_targets((), task, stats, collected)  # whatever the dataset's name
    assert t[0] == 8.0
    # ... and a dataset more3s did not collect DT's published ones, whatever its name
    t, src = default_targets((), task, stats, None)
    assert t == (90.0,) and "published" in src
    t, _ = default_targets((3.0, 3.0, 4.0), task, stats, None)
    assert t == (3.0, 4.0)  # every target once


def test_eval_cap_and_timestep_table_follow_the_data():
    from more3s.envs import get_task

    assert eval_cap(None)[0] is None and "did not collect" in eval_cap(None)[1]
    assert eval_cap({"max_episode_steps": 400})[0] == 400
    assert eval_cap({"max_episode_steps": None})[0] is None
    assert timestep_table([5, 24, 3], get_task("breakout")) == (23, timestep_table([24], get_task("breakout"))[1])
    t, src = timestep_table([1000, 1000], get_task("hopper"))
    assert t == 999 and "episode limit" in src


def _run(tiny_config, **kw):
    from more3s.train import train

    return train(tiny_config(name="run", max_steps=2, ckpt_every=2, **kw))


def test_run_info_round_trips_and_names_the_file_it_refuses(tiny_config, tmp_path):
    run = _run(tiny_config)
    info = RunInfo.read(run)
    assert info.format == RUN_FORMAT and info.task == "breakout" and info.model_config.window == 4
    info.write(tmp_path)
    assert RunInfo.read(tmp_path) == info
    with pytest.raises(FileNotFoundError, match="run.json does not exist"):
        RunInfo.read(tmp_path / "nowhere")
    assert info.host["cpu"] and info.host["threads"] == torch.get_num_threads() and info.host["torch"]
    unrecorded = dataclasses.replace(info, host={"note": "not recorded (run.json format 1)"})
    format1 = info.to_dict()  # as written before run.json recorded the host
    del format1["host"]
    format1["format"] = 1
    legacy = dict(format1)  # format 0: before run.json recorded its format
    del legacy["format"], legacy["max_timestep"], legacy["timestep_source"]
    legacy["timesteps"] = {"max_timestep": info.max_timestep, "source": info.timestep_source}
    for old in (format1, legacy):  # an older file reads, upgraded; `upgrade` rewrites it in the current format
        RunPaths(tmp_path).run_json.write_text(json.dumps(old))
        assert RunInfo.read(tmp_path) == unrecorded
        assert run_main(["upgrade", str(tmp_path)]) == 0
        assert json.loads(RunPaths(tmp_path).run_json.read_text())["format"] == RUN_FORMAT
        assert RunInfo.read(tmp_path) == unrecorded
    RunPaths(tmp_path).run_json.write_text(json.dumps({**info.to_dict(), "format": RUN_FORMAT + 1}))
    with pytest.raises(RunFormatError, match=f"{tmp_path}.*format {RUN_FORMAT + 1}.*newer"):
        RunInfo.read(tmp_path)
    RunPaths(tmp_path).run_json.write_text(json.dumps({"format": RUN_FORMAT, "something": "else"}))
    with pytest.raises(RunFormatError, match="not a more3s run.json.*missing"):
        RunInfo.read(tmp_path)
    RunPaths(tmp_path).run_json.write_text("[1, 2]")
    with pytest.raises(RunFormatError, match="not a more3s run.json"):
        RunInfo.read(tmp_path)


def test_checkpoints_carry_the_model_config_and_old_ones_load_from_run_json(tiny_config):
    from more3s.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint

    run = _run(tiny_config)
    step, path = list_checkpoints(RunPaths(run).checkpoints)[-1]
    ckpt = load_checkpoint(path)
    assert ModelConfig.from_dict(ckpt.state["model_config"]) == RunInfo.read(run).model_config
    model, info, loaded = load_run_model(run)
    assert loaded.step == step and model.config == info.model_config and not model.training
    # a checkpoint of the old layout (no model config inside) gets the run's, from run.json
    old_state = {k: v for k, v in ckpt.state.items() if k not in ("model_config", "step")}
    save_checkpoint(RunPaths(run).checkpoints, step + 1, model, old_state)
    old, _, loaded = load_run_model(run)
    assert loaded.step == step + 1 and "model_config" not in loaded.state and old.config == info.model_config
    for a, b in zip(model.state_dict().values(), old.state_dict().values()):
        assert torch.equal(a, b)


def test_check_encoder_refuses_another_state_design(tiny_config):
    """A run's recorded encoder fingerprint covers the state design: an encoder with other regions is refused,
    naming the run; the same design passes; a run that recorded no fingerprint is not checked."""
    import dataclasses
    import re

    from more3s.encoder import EncoderConfig, RegionConfig, load_encoder

    run = _run(tiny_config)
    info = RunInfo.read(run)
    same = load_encoder(info.encoder, device="cpu")
    info = dataclasses.replace(info, encoder_fingerprint=same.fingerprint)
    info.check_encoder(same, run)
    other = load_encoder(info.encoder, device="cpu", config=EncoderConfig(regions=RegionConfig(bottom_slots=0)))
    with pytest.raises(ValueError, match=f"run {re.escape(str(run))}.*state design"):
        info.check_encoder(other, run)
    dataclasses.replace(info, encoder_fingerprint="").check_encoder(other, run)
