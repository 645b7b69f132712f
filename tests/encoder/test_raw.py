"""``--encoder raw`` (DT as published): its features, frame stacks equal in training and rollouts."""

import numpy as np
import pytest
import torch

from more3s.encoder.raw import ATARI_FRAME_SIZE, RawObservations
from more3s.rollout.engine import _FrameStack


def test_atari_frames_become_84x84_grayscale():
    enc = RawObservations("breakout")
    frames = np.zeros((3, 210, 160, 3), np.uint8)
    frames[0] = (200, 100, 50)  # a flat colour: its luma everywhere
    frames[1, :105] = 255  # the top half white
    feats = enc.features(frames)
    assert feats.dtype == np.uint8 and feats.shape == (3, ATARI_FRAME_SIZE ** 2)
    assert (feats[0] == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)).all()
    img = feats[1].reshape(ATARI_FRAME_SIZE, ATARI_FRAME_SIZE)
    assert (img[:42] == 255).all() and (img[42:] == 0).all()
    torch.testing.assert_close(enc.embed_states("breakout", frames), torch.from_numpy(feats).float())
    assert enc.d_enc == 4 * ATARI_FRAME_SIZE ** 2 and enc.frame_stack == 4
    np.testing.assert_array_equal(enc.action_table()[:, :4], np.eye(4))
    assert enc.fingerprint == RawObservations("breakout").fingerprint != RawObservations("pong").fingerprint


def test_mujoco_observations_pass_as_they_are():
    enc = RawObservations("halfcheetah")
    obs = np.random.default_rng(0).normal(size=(5, 17)).astype(np.float32)
    np.testing.assert_array_equal(enc.features(obs), obs.astype(np.float16))
    assert enc.frame_stack == 1 and enc.d_enc == 17
    table = enc.action_table()  # e_0 = 0, e_i = one-hot: P_a(E_a(a)) = W a + b, DT's linear action embedding
    assert table.shape == (7, 17) and not table[0].any() and (table[1:, :6] == np.eye(6)).all()


@pytest.mark.parametrize("bad", [np.zeros((2, 84, 84), np.uint8), np.zeros((2, 210, 160, 3), np.float32)])
def test_bad_frames_are_named(bad):
    with pytest.raises(ValueError, match="raw breakout frames"):
        RawObservations("breakout").features(bad)
    with pytest.raises(ValueError, match="raw hopper observations"):
        RawObservations("hopper").features(np.zeros((2, 17)))


def test_training_stacks_equal_the_rollout_stacks():
    """The trainer's k-frame gather and the engine's running stack give the same input at every step."""
    from more3s.data.batches import TrainData

    class _Ep:  # one episode of T steps (T+1 observations), per-step features = its index
        def __init__(self, T):
            self.actions, self.rtg = np.zeros(T, np.int64), np.zeros(T, np.float32)

        def __len__(self):
            return len(self.actions)

    class _Cache:
        offsets = np.array([0, 6, 10])
        states = np.repeat(np.arange(10, dtype=np.float16)[:, None], 3, axis=1)  # [10 rows, d=3]
        action_table = np.eye(4, 12, dtype=np.float32)

    data = TrainData([_Ep(5), _Ep(3)], _Cache(), torch.device("cpu"), frame_stack=4)
    from more3s.data.sampler import WindowBatch

    steps = np.array([[0, 1, 2, 3, 4], [0, 1, 2, 2, 2]])
    batch = WindowBatch(episode=np.array([0, 1]), steps=steps, mask=np.ones((2, 5), bool))
    got = data.gather(batch)["states"]  # [2, 5, 12]
    stack = _FrameStack(4)
    for t in range(5):  # episode 0 played step by step
        x = torch.full((1, 3), float(t))
        np.testing.assert_array_equal(stack.push(x, np.array([t == 0])).numpy()[0], got[0, t].float().numpy())
    assert got[1, 0, :].tolist() == [6.0] * 12  # episode 1 starts by repeating its first frame
    assert got[1, 2].reshape(4, 3)[:, 0].tolist() == [6.0, 6.0, 7.0, 8.0]
