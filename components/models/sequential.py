"""Sequential modeling of images (Bai et al. 2023; AIM): a visual tokenizer
(components/models/tokenizer.py) turns an image into a raster-order sequence of discrete
tokens, and a causal transformer (the ViT blocks of components/models/vit.py with a causal
mask) learns to predict each token from a start token and the tokens before it
(next-token cross-entropy).

:class:`SequentialBackbone` is the third backbone family (components/models/backbones.py):
``forward_pool(images)`` tokenizes normalized images with its frozen tokenizer, runs the
whole sequence through the transformer and averages the hidden states, so probes, fine-tuning
and prototypes take it like a ViT or a ResNet. The tokenizer's weights are part of the
backbone's state dict, so a backbone checkpoint is self-contained; :meth:`sample` draws new
token sequences (temperature, top-k) that the tokenizer decodes to images.

Visual sentences (``sentence_length`` K > 1, Bai et al.'s "visual sentences"): in pretraining,
K images are one sequence, each opened by the start token (which so also separates them), and
the next-token loss runs over the whole sentence, so an image's tokens are predicted with the
images before it in context. The position table spans a whole sentence; one image alone (the
features, sampling) takes the first image's positions, exactly as with K = 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from components.models.tokenizer import TokenizerConfig, VisualTokenizer
from components.models.vit import Block


@dataclass
class SequentialConfig:
    """Shape of a sequential backbone: its tokenizer and the causal transformer over its tokens."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    sentence_length: int = 1  # images per pretraining sequence (a visual sentence)

    def __post_init__(self) -> None:
        if isinstance(self.tokenizer, dict):
            self.tokenizer = TokenizerConfig.from_dict(self.tokenizer)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if isinstance(self.sentence_length, bool) or not isinstance(self.sentence_length, int) \
                or not 1 <= self.sentence_length <= 64:
            raise ValueError(f"sentence_length (images per sequence) must be an integer in [1, 64], "
                             f"got {self.sentence_length!r}")

    @property
    def img_size(self) -> int:
        return self.tokenizer.img_size

    @property
    def in_chans(self) -> int:
        return self.tokenizer.in_chans

    @property
    def seq_len(self) -> int:
        return self.tokenizer.num_tokens

    @property
    def sentence_tokens(self) -> int:
        """Positions in one visual sentence: each image's start token and its tokens."""
        return self.sentence_length * (self.seq_len + 1)

    @property
    def start_token(self) -> int:
        """The start token's index: one past the tokenizer's codebook."""
        return self.tokenizer.codebook_size

    def to_dict(self) -> dict:
        d = {"tokenizer": self.tokenizer.to_dict(), "embed_dim": self.embed_dim, "depth": self.depth,
             "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio}
        # Only when set: a one-image backbone's dict (its registered architecture, its pretraining
        # resume key) stays what it was before sentences existed.
        if self.sentence_length != 1:
            d["sentence_length"] = self.sentence_length
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SequentialConfig":
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown SequentialConfig keys: {unknown}")
        d = dict(d)
        d["tokenizer"] = TokenizerConfig.from_dict(dict(d.get("tokenizer", {})))
        return cls(**d)


class SequentialBackbone(nn.Module):
    """Frozen tokenizer + causal transformer; a backbone (``forward_pool``) and a generator (``sample``)."""

    def __init__(self, cfg: SequentialConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = self.num_features = cfg.embed_dim
        self.tokenizer = VisualTokenizer(cfg.tokenizer).requires_grad_(False)
        vocab = cfg.tokenizer.codebook_size + 1  # + the start token
        self.tok_embed = nn.Embedding(vocab, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.sentence_tokens, cfg.embed_dim))
        self.blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, causal=True)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.lm_head = nn.Linear(cfg.embed_dim, cfg.tokenizer.codebook_size)
        nn.init.normal_(self.tok_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        for m in (*self.blocks.modules(), self.lm_head):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def set_drop_path(self, rate: float) -> None:
        n = len(self.blocks)
        for i, blk in enumerate(self.blocks):
            blk.drop_path.p = rate * i / max(n - 1, 1)

    def hidden(self, seq: torch.Tensor) -> torch.Tensor:
        """Token indices ``[B, L]`` (L <= sentence_tokens, the start token first) -> hidden states
        ``[B, L, D]``; position t depends only on positions <= t."""
        x = self.tok_embed(seq) + self.pos_embed[:, : seq.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def with_start(self, tokens: torch.Tensor) -> torch.Tensor:
        start = torch.full((tokens.shape[0], 1), self.cfg.start_token, dtype=torch.long, device=tokens.device)
        return torch.cat([start, tokens.long()], dim=1)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens ``[B, T]`` -> next-token logits ``[B, T, V]``: position t predicts token t from tokens < t."""
        return self.lm_head(self.hidden(self.with_start(tokens[:, :-1])))

    def next_token_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.logits(tokens)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens.reshape(-1).long())

    def sentence(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens ``[S, K, T]`` (K images per sentence) -> one sequence per sentence ``[S, K * (T + 1)]``:
        each image's tokens after a start token, which so also separates the images."""
        start = torch.full((*tokens.shape[:2], 1), self.cfg.start_token, dtype=torch.long, device=tokens.device)
        return torch.cat([start, tokens.long()], dim=2).reshape(tokens.shape[0], -1)

    def sentence_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy over whole visual sentences ``[S, K, T]``: every image token is
        predicted from all the tokens before it, earlier images included; the start tokens are given,
        never predicted (they are not in the codebook the head predicts)."""
        seq = self.sentence(tokens)
        logits = self.lm_head(self.hidden(seq[:, :-1])).float()
        # ignore_index, not a boolean selection: the shapes stay static (torch.compile, CUDA graphs)
        targets = seq[:, 1:].masked_fill(seq[:, 1:] == self.cfg.start_token, -100)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)

    def forward_pool(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized images ``[B, 1, H, W]`` -> the mean of the hidden states after each image token ``[B, D]``."""
        with torch.no_grad():
            tokens = self.tokenizer.tokenize(x)
        return self.hidden(self.with_start(tokens))[:, 1:].mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_pool(x)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, top_k: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` token sequences ``[n, T]`` drawn one token at a time (softmax at ``temperature``,
        only the ``top_k`` most likely tokens when given)."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if top_k is not None and not 1 <= top_k <= self.cfg.tokenizer.codebook_size:
            raise ValueError(f"top_k must be in [1, {self.cfg.tokenizer.codebook_size}], got {top_k}")
        device = self.pos_embed.device
        seq = torch.full((n, 1), self.cfg.start_token, dtype=torch.long, device=device)
        for _ in range(self.cfg.seq_len):
            logits = self.lm_head(self.hidden(seq)[:, -1]).float() / temperature
            if top_k is not None:
                kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(device)
            seq = torch.cat([seq, nxt], dim=1)
        return seq[:, 1:]

    @torch.no_grad()
    def generate(self, n: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` sampled images, normalized ``[n, 1, H, W]``."""
        return self.tokenizer.decode_tokens(self.sample(n, temperature, top_k, generator))


class NextTokenPretraining(nn.Module):
    """The pretraining model for ``method='sequential'``: its ``.encoder`` is the backbone we keep."""

    def __init__(self, cfg: SequentialConfig):
        super().__init__()
        self.encoder = SequentialBackbone(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The loss of a batch of images ``[B, 1, H, W]``; with ``sentence_length`` K > 1, consecutive
        groups of K images are one sentence each (B must be a multiple of K)."""
        with torch.no_grad():
            tokens = self.encoder.tokenizer.tokenize(x)
        k = self.encoder.cfg.sentence_length
        if k == 1:  # one image per sequence: the loss exactly as before sentences existed
            return self.encoder.next_token_loss(tokens)
        if tokens.shape[0] % k:
            raise ValueError(f"a batch of {tokens.shape[0]} images does not split into sentences of {k}")
        return self.encoder.sentence_loss(tokens.reshape(-1, k, tokens.shape[1]))


def load_sequential_weights(model: SequentialBackbone, state: dict) -> list[str]:
    """Load a sequential backbone's state, or only a tokenizer's (``tokenizer.*`` keys: the start of
    pretraining); returns the keys left at their initial values. Anything else is refused."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"weights do not fit a sequential backbone: unexpected keys {sorted(unexpected)[:5]}")
    if any(k.startswith("tokenizer.") for k in missing):
        raise ValueError("weights for a sequential backbone must include its tokenizer's")
    return list(missing)
