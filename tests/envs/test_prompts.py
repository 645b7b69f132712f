"""Action prompts and captions: one distinct prompt per action and per prompt set, distinct captions."""

import pytest

from more3s.envs import (PROMPT_SETS, TASKS, action_prompts, base_action_prompt, check_prompt_set, get_task,
                         state_caption)


@pytest.mark.parametrize("task", list(TASKS))
def test_prompts_distinct_per_action_and_per_set(task):
    spec = get_task(task)
    sets = {s: action_prompts(task, s) for s in PROMPT_SETS}
    for s, prompts in sets.items():
        assert len(prompts) == spec.action_dim
        assert all(isinstance(p, str) and p.strip() for p in prompts)
        assert len(set(prompts)) == len(prompts), (task, s)  # one distinct prompt per action
    for i in range(spec.action_dim):  # each set words action i differently
        assert len({sets[s][i] for s in PROMPT_SETS}) == len(PROMPT_SETS)
    if spec.action_kind == "continuous":
        bases = [base_action_prompt(task, s) for s in PROMPT_SETS]
        assert len(set(bases)) == 3 and not set(bases) & set(sets["original"])
    else:
        with pytest.raises(ValueError, match="discrete"):
            base_action_prompt(task)
    assert state_caption(task)
    with pytest.raises(ValueError, match="prompt set"):
        action_prompts(task, "poetic")


def test_captions_distinct():
    assert len({state_caption(t) for t in TASKS}) == len(TASKS)


def test_prompt_sets_are_checked_by_name():
    assert PROMPT_SETS == ("original", "synonym", "contextual")
    assert [check_prompt_set(s) for s in PROMPT_SETS] == list(PROMPT_SETS)
    with pytest.raises(ValueError, match="unknown prompt set 'poetic'; choose one of"):
        check_prompt_set("poetic")
