"""Tasks, prompts, captions, score normalization and env factories: one source of truth."""

from .make import NoopStart, make_env, make_vector_env
from .prompts import PROMPT_SETS, action_prompts, base_action_prompt, state_caption
from .scores import SCORE_REFS, ScoreRef, normalized_score
from .tasks import ATARI_FRAMESKIP, ATARI_MAX_FRAMES, ATARI_NOOP_MAX, TASKS, TaskSpec, get_task

__all__ = [
    # tasks
    "TASKS", "TaskSpec", "get_task", "ATARI_FRAMESKIP", "ATARI_MAX_FRAMES", "ATARI_NOOP_MAX",
    # text
    "PROMPT_SETS", "action_prompts", "base_action_prompt", "state_caption",
    # scores
    "SCORE_REFS", "ScoreRef", "normalized_score",
    # factories
    "NoopStart", "make_env", "make_vector_env",
]
