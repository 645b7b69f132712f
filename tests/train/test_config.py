"""TrainConfig: defaults, presets, --config files, --resume and validation errors."""

import json

import pytest
import torch

from more3s.config import (PRESETS, TrainConfig, config_from_dict, config_to_dict, load_config_file,
                           parse_args, save_config)


def test_default_is_valid_and_is_more3s():
    cfg = parse_args([])
    assert cfg == TrainConfig().validate()
    assert (cfg.rtg_mode, cfg.objective, cfg.sampler_kind) == ("kv", "semantic", "stream")
    assert cfg.memory_steps > 0 and cfg.env == "breakout"


@pytest.mark.parametrize("preset", ["dt", "bc"])
def test_presets_set_baselines(preset):
    cfg = parse_args(["--preset", preset])
    assert cfg.preset == preset
    for key, value in PRESETS[preset].items():
        assert getattr(cfg, key) == value
    assert cfg.sampler_kind == "window" and cfg.memory_steps == 0


def test_overrides_apply_after_preset_and_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.001\nwindow: 7\neval_targets: [3, 4.5]\nout_dir: somewhere\n")
    cfg = parse_args(["--config", str(path), "--preset", "dt", "--window", "9"])
    assert cfg.lr == 0.001 and cfg.window == 9 and cfg.rtg_mode == "token"
    assert cfg.eval_targets == (3.0, 4.5) and str(cfg.out_dir) == "somewhere"


def test_saved_config_round_trips(tmp_path):
    cfg = parse_args(["--lr", "1e-3", "--memory-steps", "0", "--eval-targets", "5", "6"])
    save_config(cfg, tmp_path)
    assert load_config_file(tmp_path / "config.json") == cfg
    assert load_config_file(tmp_path / "config.yaml") == cfg
    assert json.loads((tmp_path / "config.json").read_text()) == config_to_dict(cfg)


def test_resume_loads_the_runs_config(tmp_path):
    save_config(parse_args(["--window", "11", "--max-steps", "40"]), tmp_path)
    cfg = parse_args(["--resume", str(tmp_path), "--max-steps", "60"])
    assert cfg.window == 11 and cfg.max_steps == 60
    assert cfg.run_dir == tmp_path and cfg.resume == tmp_path
    with pytest.raises(FileNotFoundError, match="config.json"):
        parse_args(["--resume", str(tmp_path / "nope")])


@pytest.mark.parametrize("args, match", [
    (["--lr", "-1"], "lr"),
    (["--window", "0"], "window"),
    (["--env", "tetris"], "unknown env 'tetris'"),
    (["--sampler", "window"], "stream sampler"),
    (["--preset", "dt", "--memory-steps", "4"], "memory_steps"),
    (["--warmup-steps", "100", "--max-steps", "10"], "warmup_steps"),
    (["--rtg-features", "2"], "rtg_features"),
    (["--batch-size", "0"], "batch_size"),
    (["--dropout", "1.5"], "dropout"),
    (["--n-embd", "100", "--n-head", "3"], "n_embd"),
])
def test_bad_values_raise_clear_errors(args, match):
    with pytest.raises(ValueError, match=match):
        parse_args(args)


def test_literal_choices_are_enforced_by_the_parser_and_the_file_loader(tmp_path):
    with pytest.raises(SystemExit):
        parse_args(["--rtg-mode", "sideways"])
    with pytest.raises(SystemExit):
        parse_args(["--objective", "l1"])
    with pytest.raises(ValueError, match="rtg_mode"):
        config_from_dict({"rtg_mode": "sideways"})
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict({"learning_rate": 1.0})
    with pytest.raises(TypeError, match="window"):
        config_from_dict({"window": "ten"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [unclosed\n")
    with pytest.raises(ValueError, match="could not be parsed"):
        load_config_file(bad)
    with pytest.raises(ValueError, match="preset"):
        parse_args(["--preset", "ppo"])


def test_default_targets_published_vs_collected():
    from more3s.envs import get_task
    from more3s.report import behaviour_stats
    from more3s.train import default_targets

    stats = behaviour_stats("breakout", [1.0, 5.0, 9.0], [1.0, 4.0, 8.0])
    task = get_task("breakout")
    collected = {"collected_by": "more3s", "policy": "mixed", "max_episode_steps": 400}
    # provenance decides, never the name (issue 10): a more3s collection gets the data's targets ...
    t, src = default_targets(TrainConfig(), task, stats, collected)
    assert t[0] == 8.0 and "from the data" in src and "90" in src
    t, _ = default_targets(TrainConfig(dataset="atari/breakout/expert-v0"), task, stats, collected)
    assert t[0] == 8.0
    # ... and a dataset more3s did not collect DT's published ones, whatever its name
    t, src = default_targets(TrainConfig(dataset="more3s/breakout/mine-v0"), task, stats, None)
    assert t == (90.0,) and "published" in src
    t, _ = default_targets(TrainConfig(eval_targets=(3.0, 3.0, 4.0)), task, stats, None)
    assert t == (3.0, 4.0)  # every target once


def test_eval_fields_are_validated():
    with pytest.raises(ValueError, match="eval_every"):
        TrainConfig(eval_every=0).validate()
    with pytest.raises(ValueError, match="eval_max_episode_steps"):
        TrainConfig(eval_max_episode_steps=0).validate()
    with pytest.raises(ValueError, match="eval_every_episodes"):
        TrainConfig(eval_every_episodes=0).validate()
    assert parse_args(["--eval-max-episode-steps", "full"]).eval_max_episode_steps == "full"
    assert parse_args(["--eval-max-episode-steps", "50", "--eval-every", "5"]).eval_every == 5
    with pytest.raises(SystemExit):
        parse_args(["--eval-dtype", "fp64"])


def test_eval_dtype_the_device_cannot_run_fails_before_training(capsys):
    from more3s.evaluate import resolve_eval_dtype
    from more3s.train import main

    assert resolve_eval_dtype("auto", "cpu") == torch.float32
    assert resolve_eval_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        resolve_eval_dtype("fp16", "cpu")
    assert main(["--device", "cpu", "--eval-dtype", "fp16", "--dataset", "more3s/none/missing-v0"]) == 2
    assert "fp16" in capsys.readouterr().err


def test_eval_cap_and_timestep_table_follow_the_data():
    from more3s.envs import get_task
    from more3s.train import eval_cap, timestep_table

    assert eval_cap(None)[0] is None and "did not collect" in eval_cap(None)[1]
    assert eval_cap({"max_episode_steps": 400})[0] == 400
    assert eval_cap({"max_episode_steps": None})[0] is None
    assert timestep_table([5, 24, 3], get_task("breakout")) == (23, timestep_table([24], get_task("breakout"))[1])
    t, src = timestep_table([1000, 1000], get_task("hopper"))
    assert t == 999 and "episode limit" in src
