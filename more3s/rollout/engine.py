"""The rollout engine: RTG-conditioned episodes of N vectorised environments at once (greedy or sampled actions).

Per step, for all N environments together: regions of the current and previous frame -> frozen
encoder (``encoder.embed_states``, batched) -> one model step -> greedy action -> ``venv.step``.
Environments reset independently (gymnasium's same-step autoreset): a finished environment starts
its next episode in the same step, with a fresh RTG, timestep 0 and a start token, while the others
carry on. The RTG is decremented by the reward as in training (clipped to [-1, 1] for Atari, whose
RTG is built from clipped rewards); returns are reported raw.

Three ways to get the model's decision (``mode``), all over the same tokens:

* ``ring`` (default): ``model.step`` appends the block ``[a_{t-1}, s_t]`` to a ring-buffer KV cache
  per layer (more3s.rollout.kv_cache) and attends once — O(S) per step. On CUDA the model step is
  captured once as a CUDA graph (static shapes, no host synchronisation inside) and replayed;
  the frozen encoder replays its own CUDA graphs (FrozenLxmert captures its state path per batch
  bucket), so a GPU step is region extraction on the host, one encoder graph replay, one model
  graph replay and a single device-to-host copy of the N actions.
* ``recompute``: the reference path. It keeps each environment's recent history and re-runs
  ``model.forward_banded`` (the step-banded causal mask of the rollout semantics) over it every step. With S
  context steps and L layers, the last token's output depends on the last L*(S-1)+1 steps only, so
  that much history makes it exactly what the ring computes (the equality test relies on this) at
  O((L*S)^2) per step.
* ``window``: the cache-less DT-style baseline: a plain forward over the last S steps
  (``model.recompute``), as a cache-less implementation must do to give each decision the same
  horizon. Not step-for-step equal to the ring (early tokens of the window see less context).

Every finished episode carries a digest of its action and reward sequence, so a report can say how many distinct
trajectories a score averages. A failed CUDA-graph capture falls back to eager steps with a warning, or raises
where ``strict_graph`` (default: the environment variable ``MORE3S_STRICT_CUDA_GRAPH=1``, set by the test suite).
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from more3s.envs import TaskSpec, get_task

__all__ = ["RolloutEngine", "RolloutResult", "ENGINE_MODES"]

ENGINE_MODES = ("ring", "recompute", "window")


@dataclass
class RolloutResult:
    """Finished episodes, in order of completion per environment."""

    returns: list[float]  # raw episode returns
    train_returns: list[float]  # returns in RTG units (clipped rewards for Atari)
    lengths: list[int]  # agent steps per episode
    env_index: list[int]  # which environment played it
    env_steps: int = 0  # vector steps x N (including environments past their quota)
    wall_s: float = 0.0
    logits: list[np.ndarray] = field(default_factory=list)  # [N, A] per step, when recorded
    actions: list[np.ndarray] = field(default_factory=list)  # [N] or [N, A] per step, when recorded
    digests: list[str] = field(default_factory=list)  # per episode: blake2b of its (action, reward) sequence

    @property
    def steps_per_s(self) -> float:
        return self.env_steps / self.wall_s if self.wall_s > 0 else 0.0


class _FrameStack:
    """The last ``k`` per-step encodings of each environment, concatenated (DT's 4 stacked Atari frames). An
    episode's first step repeats its own frame k times, as the trainer's stacks do at an episode start."""

    def __init__(self, k: int):
        self.k, self.buf = k, None

    def push(self, x: torch.Tensor, first: np.ndarray) -> torch.Tensor:
        """``x [N, d]`` this step's encodings, ``first [N]`` episode starts -> ``[N, k * d]``."""
        fresh = x[:, None].expand(-1, self.k, -1)  # [N, k, d]
        if self.buf is None:
            self.buf = fresh.clone()
        else:
            rolled = torch.cat([self.buf[:, 1:], x[:, None]], dim=1)
            self.buf = torch.where(torch.as_tensor(first, device=x.device)[:, None, None], fresh, rolled)
        return self.buf.flatten(1)


class _History:
    """The last ``H`` steps of each environment's current episode, right-aligned (left padding)."""

    def __init__(self, N: int, H: int, d_enc: int, act_shape: tuple[int, ...], act_dtype: torch.dtype,
                 device: torch.device, dtype: torch.dtype):
        self.H = H
        self.states = torch.zeros(N, H, d_enc, device=device, dtype=dtype)  # [N, H, d_enc]
        self.prev_actions = torch.zeros(N, H, *act_shape, device=device, dtype=act_dtype)  # [N, H(, A)]
        self.rtg = torch.zeros(N, H, device=device)  # [N, H]
        self.timesteps = torch.zeros(N, H, dtype=torch.long, device=device)  # [N, H]
        self.length = torch.zeros(N, dtype=torch.long, device=device)  # [N] valid steps
        self.cols = torch.arange(H, device=device)  # [H]

    def push(self, state, prev_action, rtg, timestep, first) -> None:
        """Append one step per environment; ``first [N]`` drops the previous episode's history."""
        def shift(buf, new):
            return torch.cat([buf[:, 1:], new[:, None].to(buf.dtype)], dim=1)

        self.states = shift(self.states, state)
        self.prev_actions = shift(self.prev_actions, prev_action)
        self.rtg = shift(self.rtg, rtg)
        self.timesteps = shift(self.timesteps, timestep)
        self.length = torch.where(first, torch.ones_like(self.length), (self.length + 1).clamp(max=self.H))

    def view(self) -> tuple[torch.Tensor, ...]:
        mask = self.cols[None, :] >= (self.H - self.length)[:, None]  # [N, H] True = real (left padding)
        first = mask & (self.timesteps == 0)  # an episode's step 0 (only ever the oldest real column)
        return self.states, self.prev_actions, self.rtg, self.timesteps, first, mask


class RolloutEngine:
    """Batched rollouts of ``model`` with ``encoder`` on ``task`` (see the module docstring).

    ``model``: a more3s.model.MoreModel (eval mode is set here); ``encoder``: a FrozenLxmert-like
    object with ``embed_states(task, observations, prev_observations) -> [N, d_enc]``.
    """

    def __init__(self, model, encoder, task: str | TaskSpec, *,
                 mode: Literal["ring", "recompute", "window"] = "ring", cache_backend: str = "auto",
                 cuda_graph: bool | None = None, history_steps: int | None = None, sample: bool = False,
                 strict_graph: bool | None = None):
        if mode not in ENGINE_MODES:
            raise ValueError(f"engine mode {mode!r}: expected one of {ENGINE_MODES}")
        self.model = model.eval()
        self.encoder = encoder
        self.task = task if isinstance(task, TaskSpec) else get_task(task)
        self.mode = mode
        # sample=True draws discrete actions from softmax(logits), as DT's Atari evaluation does (greedy
        # argmax makes every episode of a deterministic game identical); continuous actions stay greedy.
        self.sample = bool(sample)
        self.cache_backend = cache_backend
        cfg = model.config
        self.device = model.action_table.device
        self.dtype = model.param_dtype
        self.discrete = cfg.discrete
        if self.discrete != (self.task.action_kind == "discrete"):
            raise ValueError(f"model is {'discrete' if cfg.discrete else 'continuous'} but task "
                             f"{self.task.name!r} has {self.task.action_kind} actions")
        if cfg.act_dim != self.task.action_dim:
            raise ValueError(f"model has act_dim={cfg.act_dim}, task {self.task.name!r} has "
                             f"{self.task.action_dim} actions")
        self.context = cfg.context_steps  # S
        # recompute: L*(S-1)+1 steps make the last token exact (module docstring); more is allowed.
        self.history_steps = {"recompute": cfg.n_layer * (self.context - 1) + 1,
                              "window": self.context}.get(mode, 0)
        if history_steps is not None:
            if mode != "recompute" or history_steps < self.history_steps:
                raise ValueError(f"history_steps={history_steps}: only for mode='recompute', and at least "
                                 f"{self.history_steps} (= n_layer * (S - 1) + 1) for exact decisions")
            self.history_steps = int(history_steps)
        self.cuda_graph = (self.device.type == "cuda") if cuda_graph is None else bool(cuda_graph)
        if self.cuda_graph and self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs the model on a CUDA device")
        self._graph: Any = None
        if strict_graph is None:
            strict_graph = os.environ.get("MORE3S_STRICT_CUDA_GRAPH", "0") == "1"
        self.strict_graph = bool(strict_graph)
        self.graph_replays = 0  # model steps served by a captured CUDA graph (tests assert they happened)

    # ---- one decision for all N environments --------------------------------------------------
    def _decide(self, state, prev_action, rtg, timestep, first) -> torch.Tensor:
        """[N, A] logits (or continuous actions) for this step's inputs (all [N, ...] on device)."""
        if self.mode == "ring":
            if self._graph is not None:
                self.graph_replays += 1
                return self._graph.replay(state, prev_action, rtg, timestep, first)
            return self.model.step(self._cache, state, prev_action, rtg, timestep, first)
        self._hist.push(state, prev_action, rtg, timestep, first)
        states, prev_actions, rtgs, ts, firsts, mask = self._hist.view()
        with torch.no_grad():
            if self.mode == "recompute":
                out = self.model.forward_banded(states, prev_actions, rtgs, ts, first=firsts, mask=mask,
                                                band_steps=self.context)
                return out.logits[:, -1]  # [N, A] the current step's state token
            return self.model.recompute(states, prev_actions, rtgs, ts, first=firsts, mask=mask)

    def _setup(self, N: int) -> None:
        cfg = self.model.config
        act_shape = () if self.discrete else (cfg.act_dim,)
        act_dtype = torch.long if self.discrete else torch.float32
        self._graph = None
        if self.mode == "ring":
            self._cache = self.model.new_rollout_cache(N, backend=self.cache_backend, device=self.device)
            if self.cuda_graph:
                self._graph = _CudaGraphStep.try_capture(self.model, self._cache, N, cfg.d_enc, act_shape,
                                                         act_dtype, self.device, self.dtype,
                                                         strict=self.strict_graph)
        else:
            self._hist = _History(N, self.history_steps, cfg.d_enc, act_shape, act_dtype, self.device,
                                  self.dtype)

    # ---- the loop ---------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, venv, target: float, num_episodes: int, *, seed: int | None = None,
            record: bool = False, first_env: int = 0, total_envs: int | None = None,
            recorder=None) -> RolloutResult:
        """Play ``num_episodes`` episodes at RTG ``target`` on ``venv`` (a gymnasium VectorEnv with
        same-step autoreset, e.g. more3s.envs.make_vector_env); returns per-episode results.

        Episodes are spread evenly over the environments (env i plays ceil/floor of n/N), so the
        result does not favour short episodes; environments past their quota keep stepping (static
        shapes) but are not counted.

        Split over processes: ``venv``'s envs are envs ``first_env ..`` of ``total_envs`` in all. They take
        those envs' seeds (seed + global index), episode quotas (of ``num_episodes`` over ``total_envs``)
        and indices, so the shards together play the episodes one process with ``total_envs`` envs plays.

        ``recorder`` (e.g. more3s.video.EpisodeRecorder) is called around each ``venv.step``:
        ``frames(venv, obs, env_ids)`` before it (what the decision saw) and ``record(frames, env_ids, action,
        logits, reward, rtg, timestep, done)`` after it. It only reads and draws no random numbers, so the
        episodes are the same with or without it; None costs nothing.
        """
        if num_episodes < 1:
            raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
        if not np.isfinite(target):
            raise ValueError(f"RTG target must be finite, got {target}")
        N = int(venv.num_envs)
        G = N if total_envs is None else int(total_envs)
        if first_env < 0 or first_env + N > G:
            raise ValueError(f"envs {first_env}..{first_env + N - 1} are not inside total_envs={G}")
        g = first_env + np.arange(N)  # [N] global env indices
        quota = num_episodes // G + (g < num_episodes % G)  # [N]
        self._setup(N)
        stack = _FrameStack(self.encoder.frame_stack) if getattr(self.encoder, "frame_stack", 1) > 1 else None
        clip = self.task.clip_rewards
        dev = self.device
        t0 = time.perf_counter()
        obs, _ = venv.reset(seed=None if seed is None else [seed + int(i) for i in g])
        gen = torch.Generator(device=dev)
        # Sampled actions are reproducible per (seed, shard); shards of one run draw independent streams.
        gen.manual_seed(int(np.random.SeedSequence([0 if seed is None else int(seed), first_env]).generate_state(1)[0]))
        prev_obs = obs.copy()
        rtg = np.full(N, float(target), dtype=np.float64)  # [N] RTG units
        timestep = np.zeros(N, dtype=np.int64)
        first = np.ones(N, dtype=bool)
        if self.discrete:
            prev_action: np.ndarray = np.zeros(N, dtype=np.int64)
        else:
            prev_action = np.zeros((N, self.task.action_dim), dtype=np.float32)
        ep_ret = np.zeros(N)
        ep_train = np.zeros(N)
        done_count = np.zeros(N, dtype=np.int64)
        res = RolloutResult([], [], [], [])
        digest = [hashlib.blake2b(digest_size=8) for _ in range(N)]  # per env: its episode's (action, reward)s
        while np.any(done_count < quota):
            state = self.encoder.embed_states(self.task.name, obs, prev_obs)  # [N, d_enc] (or one frame: stacked)
            if stack is not None:
                state = stack.push(torch.as_tensor(state), first)
            # Rounded through fp16 as the embedding cache stores it: the model sees the values it trained on.
            state = torch.as_tensor(state).to(dev, torch.float16).to(self.dtype)
            logits = self._decide(
                state, torch.as_tensor(prev_action, device=dev),
                torch.as_tensor(rtg, dtype=torch.float32, device=dev),
                torch.as_tensor(timestep, device=dev), torch.as_tensor(first, device=dev))
            if self.sample and self.discrete:
                probs = torch.softmax(logits.float(), dim=-1)  # [N, A]
                action_t = torch.multinomial(probs, 1, generator=gen).squeeze(-1)  # [N]
            else:
                action_t = self.model.predict_action(logits)
            action = action_t.cpu().numpy()  # the one host sync per step
            if record:
                res.logits.append(logits.float().cpu().numpy())
                res.actions.append(action.copy())
            frames = None if recorder is None else recorder.frames(venv, obs, g)
            next_obs, reward, term, trunc, _ = venv.step(action)
            reward = np.asarray(reward, dtype=np.float64)
            for i in range(N):
                digest[i].update(action[i].tobytes() + reward[i].tobytes())
            r_train = np.clip(reward, -1.0, 1.0) if clip else reward
            if recorder is not None:  # rtg and timestep are still this decision's
                recorder.record(frames, g, action, logits, reward, rtg, timestep, np.asarray(term) | np.asarray(trunc))
            ep_ret += reward
            ep_train += r_train
            rtg -= r_train
            timestep += 1
            res.env_steps += N
            done = np.asarray(term) | np.asarray(trunc)
            for i in np.flatnonzero(done):
                if done_count[i] < quota[i]:
                    res.returns.append(float(ep_ret[i]))
                    res.train_returns.append(float(ep_train[i]))
                    res.lengths.append(int(timestep[i]))
                    res.env_index.append(int(g[i]))
                    res.digests.append(digest[i].hexdigest())
                done_count[i] += 1
                digest[i] = hashlib.blake2b(digest_size=8)
            # Same-step autoreset: next_obs of a finished env is already its next episode's first frame.
            prev_obs = np.where(done.reshape(-1, *([1] * (obs.ndim - 1))), next_obs, obs)
            obs = next_obs
            prev_action = np.where(done.reshape(-1, *([1] * (prev_action.ndim - 1))),
                                   np.zeros_like(prev_action), action.astype(prev_action.dtype))
            rtg = np.where(done, float(target), rtg)
            timestep = np.where(done, 0, timestep)
            ep_ret = np.where(done, 0.0, ep_ret)
            ep_train = np.where(done, 0.0, ep_train)
            first = done
        res.wall_s = time.perf_counter() - t0
        return res


class _CudaGraphStep:
    """``model.step`` captured as one CUDA graph over static input buffers (CUDA only).

    The ring cache's state lives in device tensors, the step has no host synchronisation, and all
    shapes are static, so replaying the graph after copying the inputs into the static buffers is
    the same computation as an eager step. Captured once per rollout batch size.
    """

    def __init__(self, model, cache, N, d_enc, act_shape, act_dtype, device, dtype):
        self.model, self.cache = model, cache
        self.state = torch.zeros(N, d_enc, device=device, dtype=dtype)
        self.prev = torch.zeros(N, *act_shape, device=device, dtype=act_dtype)
        self.rtg = torch.zeros(N, device=device)
        self.t = torch.zeros(N, dtype=torch.long, device=device)
        self.first = torch.ones(N, dtype=torch.bool, device=device)
        self._replay, self.out = self._record()
        cache.reset(torch.ones(N, dtype=torch.bool, device=device))  # forget warm-up / capture tokens

    def _step(self) -> torch.Tensor:
        return self.model.step(self.cache, self.state, self.prev, self.rtg, self.t, self.first)

    def _record(self):
        """Capture one step over the static buffers -> (replay(), static output). (Tests replace this with an
        eager twin to check the buffer and reset bookkeeping on a CPU.)"""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(3):  # warm-up: lazy init, autotuning, allocator pools
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            out = self._step()
        return graph.replay, out

    @classmethod
    def try_capture(cls, *args, strict: bool = False) -> "_CudaGraphStep | None":
        """The captured step, or None (eager steps, with a warning) when capture fails; ``strict`` raises instead."""
        try:
            return cls(*args)
        except Exception as e:  # noqa: BLE001 - any capture failure falls back to eager steps
            if strict:
                raise RuntimeError(f"CUDA graph capture of the model step failed ({type(e).__name__}: {e}); "
                                   "strict_graph / MORE3S_STRICT_CUDA_GRAPH=1 makes that an error") from e
            warnings.warn(f"CUDA graph capture of the model step failed ({e}); running eager steps",
                          RuntimeWarning, stacklevel=3)
            return None

    def replay(self, state, prev_action, rtg, timestep, first) -> torch.Tensor:
        self.state.copy_(state)
        self.prev.copy_(prev_action)
        self.rtg.copy_(rtg)
        self.t.copy_(timestep)
        self.first.copy_(first)
        self._replay()
        return self.out
