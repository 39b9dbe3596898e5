"""Prompt tokens and the text encoder trained with the video generator.

Token ids come from `t2v.vocab.tokenize` (1-based, 0 = padding), so an unknown word is a
`VocabularyError` naming it. The encoder factors a prompt into three codes -- colour, shape,
motion -- by attention slots: each slot attends over the tokens of its grammatical role (known
from the vocabulary) plus a learned "none" token, so "purple square" or "circle moving up-right"
are new combinations of codes learned separately, and a prompt without a colour word selects the
colour slot's "none" (any colour).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from t2v import vocab

ROLES = ("color", "shape", "motion")  # slot order of TextEncoder's output


def vocab_size() -> int:
    """Embedding rows: every vocabulary word plus padding id 0."""
    return len(vocab.words()) + 1


def token_roles(words: list[str] | tuple[str, ...] | None = None) -> list[int]:
    """Role id of every token id (0 = padding, 1 = colour, 2 = shape, 3 = motion word), for `words`
    (a model's saved token vocabulary) or the current vocabulary."""
    return [0] + [1 if w in vocab.COLORS else 2 if w in vocab.SHAPES else 3
                  for w in (vocab.words() if words is None else words)]


def max_prompt_len() -> int:
    """Longest canonical prompt in tokens: colour + shape + the longest motion phrase."""
    return 2 + max(len(m.split()) for m in vocab.motion_names())


def encode(prompts: list[str], length: int | None = None) -> torch.Tensor:
    """Token ids of valid prompts, right-padded with 0. # (N, L) int64

    Raises VocabularyError (naming the word and the known words) before any work is done."""
    length = length or max_prompt_len()
    ids = [vocab.tokenize(p) for p in prompts]
    too_long = [p for p, t in zip(prompts, ids) if len(t) > length]
    if too_long:
        raise vocab.VocabularyError(f"prompt {too_long[0]!r} has more than {length} tokens")
    out = torch.zeros(len(ids), length, dtype=torch.long)
    for i, t in enumerate(ids):
        out[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    return out


@dataclass(frozen=True)
class Labels:
    """Class indices of a prompt's parts (-1 where the prompt leaves the colour open)."""

    color: int
    shape: int
    motion: int


def labels(prompt: str) -> Labels:
    p = vocab.parse_prompt(prompt)
    return Labels(
        list(vocab.COLORS).index(p.color) if p.color else -1,
        vocab.SHAPES.index(p.shape),
        vocab.motion_names().index(p.motion),
    )


def drop_color(prompt: str) -> str:
    """The prompt without its colour word (the vocabulary allows it: then any colour is valid)."""
    p = vocab.parse_prompt(prompt)
    return vocab.canonical_prompt(None, p.shape, p.motion)


class TextEncoder(nn.Module):
    """Token ids -> one code per role (colour, shape, motion) by role-restricted attention slots.

    (B, L) int64 -> (B, 3, D)
    """

    def __init__(self, n_vocab: int, roles: list[int], dim: int = 64) -> None:
        super().__init__()
        self.dim = dim
        self.tok = nn.Embedding(n_vocab, dim, padding_idx=0)
        self.register_buffer("roles", torch.tensor(roles, dtype=torch.long), persistent=True)
        self.query = nn.Parameter(torch.randn(len(ROLES), dim) * dim**-0.5)  # one learned query per slot
        self.none = nn.Parameter(torch.randn(len(ROLES), dim) * 0.1)  # what a slot reads when its role is absent
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        B, L = ids.shape
        e = self.tok(ids)  # (B, L, D)
        k, v = self.key(e), self.value(e)  # (B, L, D)
        logits = torch.einsum("sd,bld->bsl", self.query, k) * self.dim**-0.5  # (B, S, L)
        slot_role = torch.arange(1, len(ROLES) + 1, device=ids.device)  # (S,)
        allowed = self.roles[ids].unsqueeze(1) == slot_role.view(1, -1, 1)  # (B, S, L)
        logits = logits.masked_fill(~allowed, float("-inf"))
        none_logit = torch.zeros(B, len(ROLES), 1, device=ids.device, dtype=logits.dtype)
        # the "none" token competes only when the role has no word in the prompt
        has_role = allowed.any(-1, keepdim=True)  # (B, S, 1)
        none_logit = none_logit.masked_fill(has_role, float("-inf"))
        attn = F.softmax(torch.cat([logits, none_logit], -1), -1)  # (B, S, L+1)
        vals = torch.cat([v.unsqueeze(1).expand(B, len(ROLES), L, self.dim),
                          self.none.view(1, len(ROLES), 1, self.dim).expand(B, -1, -1, -1)], 2)  # (B, S, L+1, D)
        codes = torch.einsum("bsl,bsld->bsd", attn, vals)  # (B, S, D)
        return self.out(codes)  # (B, S, D)


class MeanEmbedding(nn.Module):
    """The tutorial's text encoder: mean of word embeddings (padding excluded). (B, L) -> (B, D)"""

    def __init__(self, n_vocab: int, dim: int = 10) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_vocab, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids > 0).unsqueeze(-1).float()  # (B, L, 1)
        return (self.embedding(ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class BagOfWords(nn.Module):
    """Discriminator-side prompt embedding: sum of word vectors, so a projection score is a sum of
    per-word scores and unseen combinations are scored from their words. (B, L) -> (B, D)"""

    def __init__(self, n_vocab: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_vocab, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.02)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids).sum(1)


class TransformerTextEncoder(nn.Module):
    """Token ids -> `slots` codes: a transformer encoder over the prompt (learned positions, self-attention,
    padding masked), then learned queries that attend over its outputs (one per slot).

    (B, L) int64 -> (B, S, D). `slots=3` stands in for `TextEncoder`'s colour/shape/motion slots (no role
    restriction: the critics' heads teach each slot its part); `slots=1` is one sentence code."""

    def __init__(self, n_vocab: int, dim: int = 64, slots: int = 1, layers: int = 2, heads: int = 4,
                 max_len: int = 16) -> None:
        super().__init__()
        self.tok = nn.Embedding(n_vocab, dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.query = nn.Parameter(torch.randn(slots, dim) * dim**-0.5)
        self.pool = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        B, L = ids.shape
        pad = ids == 0  # (B, L)
        pad = pad & ~pad.all(1, keepdim=True)  # an all-padding row would attend to nothing: let it read padding
        h = self.encoder(self.tok(ids) + self.pos[:L], src_key_padding_mask=pad)  # (B, L, D)
        q = self.query.unsqueeze(0).expand(B, -1, -1)  # (B, S, D)
        codes, _ = self.pool(q, h, h, key_padding_mask=pad, need_weights=False)  # (B, S, D)
        return self.out(codes)


TEXT_ENCODERS = ("slots", "bag", "transformer")  # what `TrainConfig.text_encoder` may name


def build_encoder(kind: str, words: tuple[str, ...], dim: int, slots: int = 1) -> nn.Module:
    """A generator-side text encoder by name, for a model trained with token vocabulary `words`: `slots`
    (role slots, 3 codes), `bag` (mean of word embeddings, 1 code) or `transformer` (`slots` codes).
    Every one returns (B, S, D)."""
    n_vocab = len(words) + 1
    if kind == "slots":
        return TextEncoder(n_vocab, token_roles(words), dim)
    if kind == "bag":
        return nn.Sequential(MeanEmbedding(n_vocab, dim), nn.Unflatten(1, (1, dim)))
    if kind == "transformer":
        return TransformerTextEncoder(n_vocab, dim, slots)
    raise ValueError(f"unknown text_encoder {kind!r}; valid: {', '.join(TEXT_ENCODERS)}")


def code_width(kind: str, dim: int, slots: int = 1) -> int:
    """Width of the flattened codes of `build_encoder(kind, ..., dim, slots)`."""
    return dim * (3 if kind == "slots" else 1 if kind == "bag" else slots)
