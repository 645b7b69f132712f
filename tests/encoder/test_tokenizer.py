"""The offline tokenizer: a vocabulary built from the project's own text, and the check every tokenizer passes."""

import pytest

from more3s.encoder.tokenizer import (SPECIAL_TOKENS, TokenizerError, build_tokenizer, build_vocab, check_tokenizer,
                                      project_texts, tokenizer_fingerprint)
from more3s.envs import PROMPT_SETS, TASKS, action_prompts, state_caption


def test_project_texts_hold_every_prompt_and_caption():
    texts = set(project_texts())
    for task in TASKS:
        assert state_caption(task) in texts
        for ps in PROMPT_SETS:
            assert set(action_prompts(task, ps)) <= texts


def test_vocab_layout():
    vocab = build_vocab(["Move the paddle"])
    assert [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][:len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    assert vocab["[PAD]"] == 0  # LXMERT's padding_idx
    assert {"move", "the", "paddle", "z", "##z"} <= set(vocab)
    assert sorted(vocab.values()) == list(range(len(vocab)))  # dense ids, no duplicates


def test_fingerprint_follows_the_vocabulary():
    a, b = build_tokenizer(), build_tokenizer()
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    other = build_tokenizer([*project_texts(), "an extra zebra"])
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(a)


def test_pad_must_be_id_zero():
    from transformers import BertTokenizer

    vocab = build_vocab()
    swapped = dict(vocab)
    swapped["[PAD]"], swapped["[UNK]"] = vocab["[UNK]"], vocab["[PAD]"]
    with pytest.raises(TokenizerError, match=r"\[PAD\] id 1"):
        check_tokenizer(BertTokenizer(vocab=swapped, do_lower_case=True), "swapped")
