"""TrainConfig (more3s.config): defaults, presets, files, the command line, validation."""

import json

import pytest

from more3s.config import (PRESETS, TrainConfig, config_from_dict, config_to_dict, load_config_file,
                           parse_args, save_config)
from more3s.config import DT_PUBLISHED, preset_overrides


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
    (["--memory-drop", "1.0"], "memory_drop"),
    (["--preset", "dt", "--memory-drop", "0.25"], "memory_drop"),
    (["--encoder-threads", "0"], "encoder_threads"),
    (["--top-percent", "0"], "top_percent"),
    (["--top-percent", "150"], "top_percent"),
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


def test_preset_is_per_family_and_overridable():
    atari = parse_args(["--preset", "dt-published"])
    assert (atari.window, atari.batch_size, atari.n_head, atari.lr) == (30, 128, 8, 6e-4)
    pong = parse_args(["--preset", "dt-published", "--env", "pong", "--dataset", "x/pong-v0"])
    assert (pong.window, pong.batch_size) == (50, 512)
    hopper = parse_args(["--preset", "dt-published", "--env", "hopper", "--dataset", "x/h-v0", "--lr", "3e-4"])
    assert (hopper.n_layer, hopper.grad_clip, hopper.lr, hopper.encoder) == (3, 0.25, 3e-4, "raw")
    assert DT_PUBLISHED["mujoco"]["weight_decay"] == 1e-4
    with pytest.raises(ValueError, match="choose one of"):
        preset_overrides("dt-2021", "breakout")


def test_eval_video_flag_on_train():
    from more3s.config import TrainConfig, parse_args

    assert parse_args([]).eval_video == 0  # off by default: nothing rendered or drawn
    assert parse_args(["--eval-video"]).eval_video == 1  # bare: the first episode of every target
    assert parse_args(["--eval-video", "3", "--max-steps", "5"]).eval_video == 3
    with pytest.raises(ValueError, match="eval_video"):
        TrainConfig(eval_video=-2).validate()


def test_every_preset_is_a_cli_choice():
    from typing import get_args

    from more3s.config import PRESETS, PresetChoice

    assert get_args(PresetChoice) == tuple(PRESETS)


def test_a_renamed_choice_in_an_old_config_says_its_new_name(tmp_path):
    import json

    from more3s.config import TrainConfig, config_to_dict, load_config_file

    old = {**config_to_dict(TrainConfig()), "eval_engine": "recompute"}
    (tmp_path / "config.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="eval_engine='recompute' was renamed 'banded'"):
        load_config_file(tmp_path / "config.json")
