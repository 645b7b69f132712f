"""Tasks and everything defined per task: the first stop of the data flow (envs -> data -> encoder -> model ->
rollout -> train / evaluate -> report).

* ``tasks.py``   the task table (``TASKS``, ``TaskSpec``), ``get_task``, and the one check that an action
  space or an array of actions fits a task;
* ``prompts.py`` action prompts and state captions, and the prompt sets (``PromptSet``);
* ``scores.py``  normalized scores and their references;
* ``make.py``    environment factories that apply each task's protocol.
"""

from .make import NoopStart, atari_ram, make_env, make_vector_env
from .prompts import PROMPT_SETS, PromptSet, action_prompts, base_action_prompt, check_prompt_set, state_caption
from .scores import SCORE_REFS, ScoreRef, normalized_score
from .tasks import (ATARI_FRAMESKIP, ATARI_MAX_FRAMES, ATARI_NOOP_MAX, TASKS, TaskSpec, check_action_space,
                    check_actions, get_task, guess_task)

__all__ = [
    # tasks
    "TASKS", "TaskSpec", "get_task", "guess_task", "check_action_space", "check_actions",
    "ATARI_FRAMESKIP", "ATARI_MAX_FRAMES", "ATARI_NOOP_MAX",
    # text
    "PROMPT_SETS", "PromptSet", "check_prompt_set", "action_prompts", "base_action_prompt", "state_caption",
    # scores
    "SCORE_REFS", "ScoreRef", "normalized_score",
    # factories
    "NoopStart", "make_env", "make_vector_env", "atari_ram",
]
