"""The rollout engine: RTG-conditioned episodes of N vectorised environments at once (argmax or sampled actions).

Per step, for all N environments together: regions of the current and previous frame (the previous frame's
components remembered from the step before) -> frozen encoder (``encoder.embed_states``, batched) -> one model decision -> an action (the argmax, or a draw
from the softmax with ``sample=True``, at ``temperature`` 1 as DT does; continuous actions are the model's output) ->
``venv.step``.
Environments reset independently (gymnasium's same-step autoreset): a finished environment starts
its next episode in the same step, with a fresh RTG, timestep 0 and a start token, while the others
carry on. The RTG is decremented by the reward as in training (clipped to [-1, 1] for Atari, whose
RTG is built from clipped rewards); returns are reported raw.

The engine sits above the model: it drives a ``MoreModel`` through its typed rollout API (``step`` over
the ring cache of ``new_rollout_cache``, ``forward_banded``, ``step_without_cache``). Three ways to get
the model's decision (``mode``, one of ``ENGINE_MODES``), all over the same tokens:

* ``ring`` (default): ``model.step`` appends the block ``[a_{t-1}, s_t]`` to a ring-buffer KV cache
  per layer (more3s.model.kv_cache) and attends once — O(S) per step. On CUDA the model step is
  captured once as a CUDA graph (static shapes, no host synchronisation inside) and replayed;
  the frozen encoder replays its own CUDA graphs (FrozenLxmert captures its state path per batch
  bucket), so a GPU step is region extraction on the host, one encoder graph replay, one model
  graph replay and a single device-to-host copy of the N actions.
  On the CPU, ``compile_step=True`` runs the model step as one ``torch.compile``'d graph instead
  (``MoreModel.compile_step``): the same decisions with a fraction of the per-op dispatch.
* ``banded``: the exact oracle of ``ring``. It keeps each environment's recent history and re-runs
  ``model.forward_banded`` (the step-banded causal mask of the rollout semantics) over it every step. With S
  context steps and L layers, the last token's output depends on the last L*(S-1)+1 steps only, so
  that much history makes it exactly what the ring computes (the equality test relies on this) at
  O((L*S)^2) per step.
* ``window``: the cache-less DT-style baseline: a plain forward over the last S steps
  (``model.step_without_cache``), as a cache-less implementation must do to give each decision the same
  horizon. Not step-for-step equal to the ring (early tokens of the window see less context).

Every finished episode carries a digest of its action and reward sequence, so a report can say how many distinct
trajectories a score averages. A failed CUDA-graph capture falls back to eager steps with a warning, or raises
where ``strict_graph`` (default: the environment variable ``MORE3S_STRICT_CUDA_GRAPH=1``, set by the test suite;
``more3s.cuda_graphs``).
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

import numpy as np
import torch

from more3s import cuda_graphs
from more3s.envs import TaskSpec, get_task
from more3s.model import MoreModel
from more3s.model.kv_cache import CacheBackend, RingKVCache

__all__ = ["RolloutEngine", "RolloutResult", "ENGINE_MODES", "EngineMode", "StateEncoder", "check_temperature",
           "sampling_probs"]

EngineMode = Literal["ring", "banded", "window"]
ENGINE_MODES: tuple[EngineMode, ...] = get_args(EngineMode)


class StateEncoder(Protocol):
    """What the engine needs of an encoder (FrozenLxmert, RawPixels): states of N environments -> [N, d_enc]."""

    def embed_states(self, task: str, observations: np.ndarray, prev_observations: np.ndarray) -> Any: ...


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
        self.k = k
        self.buf: torch.Tensor | None = None

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

    def push(self, state: torch.Tensor, prev_action: torch.Tensor, rtg: torch.Tensor, timestep: torch.Tensor,
             first: torch.Tensor) -> None:
        """Append one step per environment; ``first [N]`` drops the previous episode's history."""
        def shift(buf: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
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


@dataclass
class _Streams:
    """Per-environment state of a run between steps (numpy arrays over the N environments)."""

    obs: np.ndarray
    prev_obs: np.ndarray
    rtg: np.ndarray  # RTG units
    timestep: np.ndarray
    first: np.ndarray
    prev_action: np.ndarray  # [N] int64 | [N, A] float32
    ep_ret: np.ndarray
    ep_train: np.ndarray
    done_count: np.ndarray
    digest: list[Any]  # per env: blake2b of its episode's (action, reward)s
    target: float  # the RTG every episode starts from

    @classmethod
    def start(cls, obs: np.ndarray, target: float, discrete: bool, action_dim: int) -> _Streams:
        N = obs.shape[0]
        prev_action = np.zeros(N, dtype=np.int64) if discrete else np.zeros((N, action_dim), dtype=np.float32)
        return cls(obs, obs.copy(), np.full(N, float(target), dtype=np.float64), np.zeros(N, dtype=np.int64),
                   np.ones(N, dtype=bool), prev_action, np.zeros(N), np.zeros(N), np.zeros(N, dtype=np.int64),
                   [hashlib.blake2b(digest_size=8) for _ in range(N)], float(target))


def sampling_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The distribution sampled actions are drawn from: softmax(logits / temperature), in fp32."""
    return torch.softmax(logits.float() / temperature, dim=-1)


def check_temperature(temperature: float) -> None:
    """ValueError unless ``temperature`` (of the sampled actions' softmax) is a finite number > 0."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0 (1 = DT's sampled protocol), got {temperature!r}")


class RolloutEngine:
    """Batched rollouts of ``model`` with ``encoder`` on ``task`` (see the module docstring).

    ``model``: a MoreModel (eval mode is set here); ``encoder``: a ``StateEncoder`` (e.g. FrozenLxmert), whose
    optional ``frame_stack`` > 1 stacks its per-step encodings as the trainer does.
    """

    def __init__(self, model: MoreModel, encoder: StateEncoder, task: str | TaskSpec, *,
                 mode: EngineMode = "ring", cache_backend: CacheBackend = "auto",
                 cuda_graph: bool | None = None, history_steps: int | None = None, sample: bool = False,
                 strict_graph: bool | None = None, compile_step: bool = False, temperature: float = 1.0):
        if mode not in ENGINE_MODES:
            raise ValueError(f"engine mode {mode!r}: expected one of {ENGINE_MODES}")
        check_temperature(temperature)
        self.model = model.eval()
        self.encoder = encoder
        self.task = get_task(task)
        self.mode = mode
        # sample=True draws discrete actions from softmax(logits), as DT's Atari evaluation does (the argmax
        # makes every episode of a deterministic game identical); continuous actions are the model's output.
        self.sample = bool(sample)
        self.temperature = float(temperature)  # of the sampled softmax: 1 is DT's protocol, others a diagnostic
        self.cache_backend: CacheBackend = cache_backend
        cfg = model.config
        self.device = model.device
        self.dtype = model.param_dtype
        self.discrete = cfg.discrete
        if self.discrete != (self.task.action_kind == "discrete"):
            raise ValueError(f"model is {'discrete' if cfg.discrete else 'continuous'} but task "
                             f"{self.task.name!r} has {self.task.action_kind} actions")
        if cfg.act_dim != self.task.action_dim:
            raise ValueError(f"model has act_dim={cfg.act_dim}, task {self.task.name!r} has "
                             f"{self.task.action_dim} actions")
        self.context = cfg.context_steps  # S
        # banded: L*(S-1)+1 steps make the last token exact (module docstring); more is allowed.
        self.history_steps = {"banded": cfg.geometry[0] * (self.context - 1) + 1, "window": self.context}.get(mode, 0)
        if history_steps is not None:
            if mode != "banded" or history_steps < self.history_steps:
                raise ValueError(f"history_steps={history_steps}: only for mode='banded', and at least "
                                 f"{self.history_steps} (= n_layer * (S - 1) + 1) for exact decisions")
            self.history_steps = int(history_steps)
        self.cuda_graph = (self.device.type == "cuda") if cuda_graph is None else bool(cuda_graph)
        if self.cuda_graph and self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs the model on a CUDA device")
        self._graph: _CudaGraphStep | None = None
        self.strict_graph = cuda_graphs.strict_default() if strict_graph is None else bool(strict_graph)
        self.graph_replays = 0  # model steps served by a captured CUDA graph (tests assert they happened)
        # compile_step: CPU ring steps as one torch.compile'd graph (MoreModel.compile_step), built once per batch
        # size with its own ring, which every run's first step resets, so that a run never pays a second compile.
        if compile_step and (mode != "ring" or self.device.type != "cpu"):
            raise ValueError(f"compile_step: for the ring engine on CPU only (mode {mode!r}, device {self.device}); "
                             "on CUDA the step is captured as a CUDA graph instead")
        self.compile_step = bool(compile_step)
        self._compiled: dict[int, tuple[RingKVCache, Callable[..., torch.Tensor]]] = {}
        self._compiled_step: Callable[..., torch.Tensor] | None = None
        self.compiled_steps = 0  # model steps served by a compiled step (tests assert they happened)

    def sampling(self, sample: bool) -> RolloutEngine:
        """This engine drawing (``sample=True``) or taking the argmax of its actions, sharing its compiled steps and
        their rings (runs are sequential), so that sampled and greedy episodes pay one compile."""
        twin = copy.copy(self)
        twin.sample = bool(sample)
        return twin

    # ---- one decision for all N environments --------------------------------------------------
    def _decide(self, state: torch.Tensor, prev_action: torch.Tensor, rtg: torch.Tensor, timestep: torch.Tensor,
                first: torch.Tensor) -> torch.Tensor:
        """[N, A] logits (or continuous actions) for this step's inputs (all [N, ...] on device)."""
        if self.mode == "ring":
            if self._graph is not None:
                self.graph_replays += 1
                return self._graph.replay(state, prev_action, rtg, timestep, first)
            if self._compiled_step is not None:
                self.compiled_steps += 1
                return self._compiled_step(state, prev_action, rtg, timestep, first)
            return self.model.step(self._cache, state, prev_action, rtg, timestep, first)
        self._hist.push(state, prev_action, rtg, timestep, first)
        states, prev_actions, rtgs, ts, firsts, mask = self._hist.view()
        with torch.no_grad():
            if self.mode == "banded":
                out = self.model.forward_banded(states, prev_actions, rtgs, ts, first=firsts, mask=mask,
                                                band_steps=self.context)
                return out.logits[:, -1]  # [N, A] the current step's state token
            return self.model.step_without_cache(states, prev_actions, rtgs, ts, first=firsts, mask=mask)

    def _setup(self, N: int) -> None:
        cfg = self.model.config
        act_shape = () if self.discrete else (cfg.act_dim,)
        act_dtype = torch.long if self.discrete else torch.float32
        self._graph = None
        if self.mode == "ring" and self.compile_step:
            if N not in self._compiled:
                cache = self.model.new_rollout_cache(N, backend=self.cache_backend, device=self.device)
                self._compiled[N] = cache, self.model.compile_step(cache)
            self._cache, self._compiled_step = self._compiled[N]
        elif self.mode == "ring":
            self._cache = self.model.new_rollout_cache(N, backend=self.cache_backend, device=self.device)
            if self.cuda_graph:
                cache = self._cache
                self._graph = cuda_graphs.try_capture(
                    lambda: _CudaGraphStep(self.model, cache, N, cfg.d_enc, act_shape, act_dtype, self.device,
                                           self.dtype), "the model step", strict=self.strict_graph)
        else:
            self._hist = _History(N, self.history_steps, cfg.d_enc, act_shape, act_dtype, self.device,
                                  self.dtype)

    def _act(self, s: _Streams, stack: _FrameStack | None, gen: torch.Generator) -> tuple[np.ndarray, torch.Tensor]:
        """Encode the N current states, decide, pick the actions -> (actions on the host, logits [N, A])."""
        dev = self.device
        state = self.encoder.embed_states(self.task.name, s.obs, s.prev_obs)  # [N, d_enc] (or one frame: stacked)
        if stack is not None:
            state = stack.push(torch.as_tensor(state), s.first)
        # Rounded through fp16 as the embedding cache stores it: the model sees the values it trained on.
        state = torch.as_tensor(state).to(dev, torch.float16).to(self.dtype)
        logits = self._decide(
            state, torch.as_tensor(s.prev_action, device=dev), torch.as_tensor(s.rtg, dtype=torch.float32, device=dev),
            torch.as_tensor(s.timestep, device=dev), torch.as_tensor(s.first, device=dev))
        if self.sample and self.discrete:
            probs = sampling_probs(logits, self.temperature)  # [N, A]
            action_t = torch.multinomial(probs, 1, generator=gen).squeeze(-1)  # [N]
        else:
            action_t = self.model.predict_action(logits)
        return action_t.cpu().numpy(), logits  # the one host sync per step

    def _advance(self, s: _Streams, res: RolloutResult, action: np.ndarray, next_obs: np.ndarray,
                 reward: np.ndarray, r_train: np.ndarray, done: np.ndarray, quota: np.ndarray, g: np.ndarray) -> None:
        """Book the step's rewards, close the finished episodes (counted within their env's quota) and move every
        stream to its next step (same-step autoreset: a finished env's ``next_obs`` starts its next episode)."""
        N = len(done)
        for env in range(N):
            s.digest[env].update(action[env].tobytes() + reward[env].tobytes())
        s.ep_ret += reward
        s.ep_train += r_train
        s.rtg -= r_train
        s.timestep += 1
        res.env_steps += N
        for i in np.flatnonzero(done):
            if s.done_count[i] < quota[i]:
                res.returns.append(float(s.ep_ret[i]))
                res.train_returns.append(float(s.ep_train[i]))
                res.lengths.append(int(s.timestep[i]))
                res.env_index.append(int(g[i]))
                res.digests.append(s.digest[i].hexdigest())
            s.done_count[i] += 1
            s.digest[i] = hashlib.blake2b(digest_size=8)
        s.prev_obs = np.where(done.reshape(-1, *([1] * (s.obs.ndim - 1))), next_obs, s.obs)
        s.obs = next_obs
        s.prev_action = np.where(done.reshape(-1, *([1] * (s.prev_action.ndim - 1))),
                                 np.zeros_like(s.prev_action), action.astype(s.prev_action.dtype))
        s.rtg = np.where(done, s.target, s.rtg)
        s.timestep = np.where(done, 0, s.timestep)
        s.ep_ret = np.where(done, 0.0, s.ep_ret)
        s.ep_train = np.where(done, 0.0, s.ep_train)
        s.first = done

    # ---- the loop ---------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, venv: Any, target: float, num_episodes: int, *, seed: int | None = None,
            record: bool = False, first_env: int = 0, total_envs: int | None = None,
            recorder: Any = None) -> RolloutResult:
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
        frame_stack = int(getattr(self.encoder, "frame_stack", 1))
        stack = _FrameStack(frame_stack) if frame_stack > 1 else None
        t0 = time.perf_counter()
        obs, _ = venv.reset(seed=None if seed is None else [seed + int(i) for i in g])
        gen = torch.Generator(device=self.device)
        # Sampled actions are reproducible per (seed, shard); shards of one run draw independent streams.
        gen.manual_seed(int(np.random.SeedSequence([0 if seed is None else int(seed), first_env]).generate_state(1)[0]))
        s = _Streams.start(obs, target, self.discrete, self.task.action_dim)
        res = RolloutResult([], [], [], [])
        while np.any(s.done_count < quota):
            action, logits = self._act(s, stack, gen)
            if record:
                res.logits.append(logits.float().cpu().numpy())
                res.actions.append(action.copy())
            frames = None if recorder is None else recorder.frames(venv, s.obs, g)
            next_obs, reward, term, trunc, _ = venv.step(action)
            reward = np.asarray(reward, dtype=np.float64)
            r_train = np.clip(reward, -1.0, 1.0) if self.task.clip_rewards else reward
            done = np.asarray(term) | np.asarray(trunc)
            if recorder is not None:  # rtg and timestep are still this decision's
                recorder.record(frames, g, action, logits, reward, s.rtg, s.timestep, done)
            self._advance(s, res, action, next_obs, reward, r_train, done, quota, g)
        res.wall_s = time.perf_counter() - t0
        return res


class _CudaGraphStep:
    """``model.step`` captured as one CUDA graph over static input buffers (CUDA only).

    The ring cache's state lives in device tensors, the step has no host synchronisation, and all
    shapes are static, so replaying the graph after copying the inputs into the static buffers is
    the same computation as an eager step. Captured once per rollout batch size (``cuda_graphs.capture``).
    """

    def __init__(self, model: MoreModel, cache: RingKVCache, N: int, d_enc: int, act_shape: tuple[int, ...],
                 act_dtype: torch.dtype, device: torch.device | str, dtype: torch.dtype):
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

    def _record(self) -> tuple[Callable[[], Any], torch.Tensor]:
        """Capture one step over the static buffers -> (replay(), static output). (Tests replace this with an
        eager twin to check the buffer and reset bookkeeping on a CPU.)"""
        return cuda_graphs.capture(self._step, warmup=3)  # warm-up: lazy init, allocator pools

    def replay(self, state: torch.Tensor, prev_action: torch.Tensor, rtg: torch.Tensor, timestep: torch.Tensor,
               first: torch.Tensor) -> torch.Tensor:
        self.state.copy_(state)
        self.prev.copy_(prev_action)
        self.rtg.copy_(rtg)
        self.t.copy_(timestep)
        self.first.copy_(first)
        self._replay()
        return self.out
