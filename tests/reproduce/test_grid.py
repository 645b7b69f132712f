"""The grid's names, cells and per-cell configs."""

import pytest

from more3s.config import config_from_dict, preset_overrides
from more3s.reproduce.grid import ARMS, EQUAL_BUDGET, PROFILES, build_cells


@pytest.mark.parametrize("kwargs, kind, valid", [
    ({"profile": "huge"}, "profile", "smoke, cpu, paper"),
    ({"profile": "cpu", "tasks": ("breakout", "tetris")}, "task", "breakout, pong"),
    ({"profile": "smoke", "arms": ("more3s", "qlearning")}, "arm", "more3s, dt-published"),
])
def test_unknown_names_list_the_valid_ones(kwargs, kind, valid):
    with pytest.raises(ValueError, match=f"unknown {kind}.*valid {kind}s: {valid}"):
        build_cells(**kwargs)


def test_cells_are_seed_major_and_configs_validate():
    cells = build_cells("cpu", tasks=("breakout", "hopper"), arms=("more3s", "bc"), seeds=2)
    assert [c.seed for c in cells] == [0] * 4 + [1] * 4
    assert {c.key for c in cells} == {f"{t}/{a}/seed{s}" for t in ("breakout", "hopper")
                                      for a in ("more3s", "bc") for s in (0, 1)}
    for cell in cells:
        cfg = config_from_dict(cell.config_overrides()).validate()
        assert cfg.seed == cell.seed and cfg.env == cell.env
    with pytest.raises(ValueError, match="seeds"):
        build_cells("smoke", seeds=0)


def _arm_keys(arm: str, env: str) -> set:
    keys = set(ARMS[arm])
    if "preset" in ARMS[arm]:
        keys |= set(preset_overrides(ARMS[arm]["preset"], env)) - set(EQUAL_BUDGET)
    if "memory_steps" in keys:
        keys.add("memory_drop")  # the budget's memory_drop goes with the memory
    return keys


def test_memory_drop_goes_to_the_memory_arms_only():
    drops = {c.arm: config_from_dict(c.config_overrides()).validate().memory_drop
             for c in build_cells("cpu", tasks=("hopper",), seeds=1) if c.arm in ARMS}
    assert drops["more3s"] == drops["embed-rtg"] == drops["prompts-synonym"] == 0.25
    assert drops["more3s-nomem"] == drops["dt"] == drops["dt-published"] == drops["bc"] == 0.0
    assert all(config_from_dict(c.config_overrides()).memory_drop == 0.0 for c in build_cells("smoke"))


def test_every_profile_cell_config_is_valid():
    """Budgets are equal across the arms of a task: only the arm's own fields (and its preset's) differ."""
    for name, prof in PROFILES.items():
        cells = build_cells(name, seeds=1)
        by_task: dict = {}
        for cell in cells:
            cfg = config_from_dict(cell.config_overrides()).validate()
            by_task.setdefault(cell.task, []).append((cell.arm, cfg))
        for task, cfgs in by_task.items():
            base = dict(cfgs[0][1].__dict__)
            for arm, cfg in cfgs:
                differ = {k for k, v in cfg.__dict__.items() if base[k] != v} - {"name"}
                allowed = _arm_keys(arm, cfg.env) | _arm_keys(cfgs[0][0], cfg.env)
                assert differ <= allowed, (name, task, arm, differ)
    assert PROFILES["paper"].tasks["hopper-medium-replay"][0].dataset == "mujoco/hopper/medium-replay-v0"
    assert build_cells("paper", tasks=("hopper-medium-replay",), arms=("bc",))[0].env == "hopper"
    (dt,) = build_cells("cpu", tasks=("pong",), arms=("dt-published",), seeds=1)
    cfg = config_from_dict(dt.config_overrides()).validate()
    assert (cfg.encoder, cfg.window, cfg.lr, cfg.batch_size) == ("raw", 50, 6e-4, 32)  # DT's context, the grid's batch
