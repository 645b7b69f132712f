"""Offline tokenizers for the random-init LXMERT configurations, and the check every tokenizer passes.

The random-init configurations (``lxmert-tiny``, ``lxmert-base-random``) need a tokenizer without the
hub. We build a WordPiece vocabulary from the project's own text (every action prompt, base prompt and
state caption of every task and prompt set), plus single characters and ``##`` continuations so that
unseen words split into characters instead of collapsing to [UNK]. It is wrapped with
``BertTokenizer(vocab=...)``: ``BertTokenizer(vocab_file=...)`` silently
ignores the file in transformers 5.

Every tokenizer (pretrained or built here) goes through ``check_tokenizer``: transformers 5 returns a
5-token tokenizer for an unreachable hub id without raising, and with it every word becomes [UNK].
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Iterable
from typing import TYPE_CHECKING

from more3s.envs import PROMPT_SETS, TASKS, action_prompts, base_action_prompt, state_caption

if TYPE_CHECKING:
    from transformers import BertTokenizer, PreTrainedTokenizerBase

__all__ = ["SPECIAL_TOKENS", "project_texts", "build_vocab", "build_tokenizer", "check_tokenizer",
           "tokenizer_fingerprint", "TokenizerError"]

# [PAD] must be id 0: LXMERT's embeddings use padding_idx=0.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_CHARS = string.ascii_lowercase + string.digits


class TokenizerError(ValueError):
    """A tokenizer that cannot represent the project's text (empty vocabulary, all-[UNK] output)."""


def project_texts() -> list[str]:
    """Every prompt and caption the encoder may see: all tasks, all prompt sets."""
    texts: list[str] = []
    for name, spec in TASKS.items():
        texts.append(state_caption(name))
        for ps in PROMPT_SETS:
            texts.extend(action_prompts(name, ps))
            if spec.action_kind == "continuous":
                texts.append(base_action_prompt(name, ps))
    return texts


def build_vocab(texts: Iterable[str] | None = None) -> dict[str, int]:
    """Word-level WordPiece vocabulary: specials, the words of ``texts``, characters, ``##`` pieces."""
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    norm, pre = BertNormalizer(lowercase=True), BertPreTokenizer()  # what BertTokenizer applies
    words: set[str] = set()
    for t in project_texts() if texts is None else texts:
        words.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(t)))
    pieces = list(SPECIAL_TOKENS)
    pieces += sorted(words - set(SPECIAL_TOKENS))
    pieces += [c for c in _CHARS + string.punctuation if c not in words]
    pieces += ["##" + c for c in _CHARS]
    return {p: i for i, p in enumerate(dict.fromkeys(pieces))}


def build_tokenizer(texts: Iterable[str] | None = None) -> BertTokenizer:
    """A ``BertTokenizer`` over ``build_vocab(texts)``; no files, no network."""
    from transformers import BertTokenizer

    tok = BertTokenizer(vocab=build_vocab(texts), do_lower_case=True)
    check_tokenizer(tok, "offline vocabulary")
    return tok


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, source: str, texts: Iterable[str] | None = None) -> None:
    """Raise ``TokenizerError`` if ``tokenizer`` cannot represent ``texts`` (default: project texts).

    Errors: a vocabulary without [CLS]/[SEP]/[UNK] or with fewer than 100 entries (the 5-token
    tokenizer transformers 5 returns for an unreachable hub id), a text that tokenizes to nothing,
    or a text whose every token is [UNK].
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in ("[CLS]", "[SEP]", "[UNK]", "[PAD]") if t not in vocab]
    if missing:
        raise TokenizerError(f"tokenizer from {source!r} lacks special tokens {missing}")
    if len(vocab) < 100:
        raise TokenizerError(
            f"tokenizer from {source!r} has only {len(vocab)} tokens: an empty vocabulary "
            "(transformers returns one for an unreachable hub id); point the encoder at a directory "
            "with vocab.txt / tokenizer.json, or use a random-init configuration such as 'lxmert-tiny'")
    if vocab["[PAD]"] != 0:
        raise TokenizerError(f"tokenizer from {source!r} has [PAD] id {vocab['[PAD]']}; LXMERT needs 0")
    unk = vocab["[UNK]"]
    for text in project_texts() if texts is None else texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 0:
            raise TokenizerError(f"tokenizer from {source!r} turns {text!r} into no tokens")
        if all(i == unk for i in ids):
            raise TokenizerError(f"tokenizer from {source!r} turns every token of {text!r} into [UNK]")


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the sorted vocabulary (token, id) pairs and the lower-casing flag."""
    h = hashlib.sha256()
    for tok, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        h.update(f"{i}\t{tok}\n".encode())
    h.update(f"lower={getattr(tokenizer, 'do_lower_case', None)}".encode())
    return h.hexdigest()
