"""TrainConfig: defaults, presets, --config files, --resume and validation errors."""

import json

import pytest

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
    t, src = default_targets(TrainConfig(), task, stats)
    assert t[0] == 8.0 and "from the data" in src and "90" in src
    t, src = default_targets(TrainConfig(dataset="atari/breakout/expert-v0"), task, stats)
    assert t == (90.0,) and "published" in src
    t, _ = default_targets(TrainConfig(eval_targets=(3.0,)), task, stats)
    assert t == (3.0,)
