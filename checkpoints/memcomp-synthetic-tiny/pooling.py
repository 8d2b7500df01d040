"""Chunk pooling: turn a chunk's final hidden states into one vector, using only its real tokens."""

import torch
from torch import nn


class MeanPooling(nn.Module):
    """Average of the hidden states over real tokens (paper, Eq. 1): a short last chunk pools only its tokens."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class AttentionPooling(nn.Module):
    """One learned query attends over the chunk's real tokens (the paper's Appendix B alternative)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        scores = hidden_states.float() @ self.query.float() / hidden_states.shape[-1] ** 0.5
        scores = scores.masked_fill(attention_mask == 0, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1).to(hidden_states.dtype)
        return torch.einsum("bt,btd->bd", weights, hidden_states)


def build_pooling(kind: str, hidden_size: int) -> nn.Module:
    """Pooling module for `MemCompConfig.pooling`."""
    if kind == "mean":
        return MeanPooling()
    if kind == "attention":
        return AttentionPooling(hidden_size)
    raise ValueError(f"unknown pooling {kind!r}; use 'mean' or 'attention'.")
