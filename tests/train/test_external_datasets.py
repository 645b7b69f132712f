"""Issue 10: datasets more3s did not write. A HalfCheetah dataset written by Minari itself and a D4RL-layout
hdf5 file are evaluated on the task's full protocol with DT's published targets (their provenance, not their
names, decides); published Minari ids are never collected under; more3s' own collections say so."""

import json

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest

from more3s.data import collect_dataset, dataset_path, dataset_provenance, load_episodes, published_reason
from more3s.train import main as train_main
from more3s.train import train

EPISODE_STEPS = 1000  # gymnasium's HalfCheetah-v5 limit, as D4RL's and Minari's mujoco datasets


def _cheetah_episodes(n: int, seed: int = 0):
    """n full-length random-action HalfCheetah episodes: (obs [T+1, 17], actions, rewards, qpos [T, 9])."""
    env = gym.make("HalfCheetah-v5")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        obs, _ = env.reset(seed=seed + i)
        observations, actions, rewards, qpos = [obs], [], [], []
        trunc = False
        while not trunc:
            a = rng.uniform(-1, 1, size=6).astype(np.float32)
            qpos.append(env.unwrapped.data.qpos.copy())
            obs, r, term, trunc, _ = env.step(a)
            assert not term
            observations.append(obs)
            actions.append(a)
            rewards.append(r)
        out.append((np.asarray(observations), np.asarray(actions), np.asarray(rewards), np.asarray(qpos)))
    env.close()
    return out


@pytest.fixture(scope="module")
def cheetah():
    return _cheetah_episodes(2)


def _minari_by_minari(dataset_id: str, episodes) -> None:
    from minari.data_collector import EpisodeBuffer

    buffers = []
    for obs, act, rew, _ in episodes:
        T = len(act)
        buffers.append(EpisodeBuffer(observations=list(obs), actions=list(act), rewards=list(rew),
                                     terminations=[False] * T, truncations=[False] * (T - 1) + [True]))
    minari.create_dataset_from_buffers(dataset_id, buffers, env="HalfCheetah-v5", algorithm_name="random",
                                       author="someone else", author_email="x@example.org",
                                       code_permalink="https://example.org", description="random actions",
                                       eval_env="HalfCheetah-v5")


def _d4rl_file(path, episodes) -> None:
    """D4RL's layout: flat arrays, episodes split at timeouts, plus infos/* and metadata/* as D4RL ships them."""
    obs = np.concatenate([o[:-1] for o, *_ in episodes])
    nxt = np.concatenate([o[1:] for o, *_ in episodes])
    timeouts = np.concatenate([np.arange(len(a)) == len(a) - 1 for _, a, *_ in episodes])
    with h5py.File(path, "w") as f:
        f["observations"], f["next_observations"] = obs, nxt
        f["actions"] = np.concatenate([a for _, a, *_ in episodes])
        f["rewards"] = np.concatenate([r for *_, r, _ in episodes])
        f["terminals"], f["timeouts"] = np.zeros(len(obs), bool), timeouts
        f["infos/qpos"] = np.concatenate([q for *_, q in episodes])
        f["infos/action_log_probs"] = np.zeros(len(obs), np.float32)
        f["metadata/algorithm"] = "SAC"
        f["metadata/policy/fc0/weight"] = np.zeros((4, 17), np.float32)


def test_minari_written_dataset_runs_the_full_protocol(cheetah, tiny_config, cache_root, tmp_path):
    from more3s.evaluate import evaluate_run

    _minari_by_minari("someone/halfcheetah-random-v0", cheetah)
    assert dataset_provenance("someone/halfcheetah-random-v0") is None
    eps = load_episodes("someone/halfcheetah-random-v0")
    assert [len(e) for e in eps] == [EPISODE_STEPS] * 2
    cfg = tiny_config(name="ext", env="halfcheetah", dataset="someone/halfcheetah-random-v0", max_steps=2,
                      ckpt_every=2, batch_size=2)
    run = train(cfg)
    info = json.loads((run / "run.json").read_text())
    assert info["provenance"] is None and info["eval_max_episode_steps"] is None
    assert "did not collect" in info["eval_cap_source"]
    assert info["targets"] == [12000.0, 6000.0] and "published" in info["targets_source"]
    assert info["timesteps"]["max_timestep"] == EPISODE_STEPS - 1 and "episode limit" in info["timesteps"]["source"]
    rep = evaluate_run(run, episodes=1, num_envs=1, targets=(6000.0,))  # the run's cap: none
    assert rep.max_episode_steps is None and rep.targets[0].lengths == [EPISODE_STEPS]
    assert rep.actions == "greedy" and rep.greedy == []  # MuJoCo: deterministic actions only
    from more3s.report import format_table

    text = format_table(rep)
    assert "full game" in text and "not collected by more3s" in text and "did not collect" in text


def test_d4rl_layout_file_with_infos_and_metadata(cheetah, tiny_config, tmp_path):
    path = tmp_path / "halfcheetah_random-v2.hdf5"
    _d4rl_file(path, cheetah)
    eps = load_episodes(path, task="halfcheetah")
    assert [len(e) for e in eps] == [EPISODE_STEPS] * 2
    np.testing.assert_allclose(eps[1].observations[-1], cheetah[1][0][-1])
    assert dataset_provenance(path) is None
    run = train(tiny_config(name="d4rl", env="halfcheetah", dataset=str(path), max_steps=1, ckpt_every=1,
                            batch_size=2))
    info = json.loads((run / "run.json").read_text())
    assert info["eval_max_episode_steps"] is None and info["targets"] == [12000.0, 6000.0]


def test_published_ids_are_never_collected(capsys):
    for pid in ("atari/breakout/expert-v0", "mujoco/halfcheetah/medium-v0", "D4RL/door/human-v2",
                "minigrid/BabyAI-Pickup/optimal-v0"):
        assert published_reason(pid, check_remote=False)
    assert published_reason("more3s/breakout/mixed-v0") is None
    with pytest.raises(ValueError, match="published.*minari download"):
        collect_dataset("breakout", "random", 1, "atari/breakout/expert-v0", max_episode_steps=5, progress=False)
    assert not dataset_path("atari/breakout/expert-v0").exists()
    # the trainer offline: no collection, the download instructions, exit status 2
    assert train_main(["--dataset", "atari/breakout/expert-v0", "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "minari download atari/breakout/expert-v0" in err and "does not collect" in err
    assert not dataset_path("atari/breakout/expert-v0").exists()


def test_remote_listing_only_when_online(monkeypatch):
    import more3s.data.remote as io

    calls = []

    def listing(**kw):
        calls.append(kw)
        return {"someone/listed-v0": {}}

    monkeypatch.setattr(minari, "list_remote_datasets", listing)
    assert published_reason("someone/listed-v0") is None and calls == []  # HF_HUB_OFFLINE=1: never asked
    monkeypatch.setattr(io, "is_online", lambda timeout=2.0: True)
    assert "remote lists" in published_reason("someone/listed-v0")
    assert published_reason("someone/other-v0") is None


def test_collections_record_their_provenance():
    collect_dataset("breakout", "random", 1, "mine/breakout-random-v0", seed=5, max_episode_steps=7,
                    progress=False)
    prov = dataset_provenance("mine/breakout-random-v0")
    from more3s import __version__

    assert prov["collected_by"] == "more3s" and prov["version"] == __version__
    assert prov["policy"] == "random" and prov["seed"] == 5 and prov["max_episode_steps"] == 7
    assert dataset_provenance(str(dataset_path("mine/breakout-random-v0"))) == prov  # by path alike
