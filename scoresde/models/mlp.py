"""A time-conditioned residual MLP for vector data (2-D toys, flattened small images).

    h_0 = W_in x,   h_{k+1} = h_k + W2_k SiLU(W1_k SiLU(LN(h_k)) + U_k SiLU(emb)),
    out = W_out SiLU(LN(h_depth)),

with emb the noise/class embedding (embeddings.ConditioningEmbedding). W_out starts at zero, so an
untrained network predicts 0 (for the eps parametrization: the prior's score direction).
"""

from __future__ import annotations

import torch
from torch import nn

from .embeddings import ConditioningEmbedding


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed: it must be an integer >= {minimum}")
    return value


class ResidualBlock(nn.Module):
    """h + W2 SiLU(W1 SiLU(LN(h)) + U SiLU(emb))."""

    def __init__(self, hidden: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = self.fc1(self.act(self.norm(h))) + self.emb(self.act(emb))
        return h + self.fc2(self.act(z))


class MLPTrunk(nn.Module):
    """Input projection and `depth` residual blocks: (x (B, dim), emb (B, hidden)) -> (B, hidden)."""

    def __init__(self, dim: int, hidden: int, depth: int):
        super().__init__()
        self.dim = _check_int("dim", dim)
        self.inp = nn.Linear(dim, _check_int("hidden", hidden))
        self.blocks = nn.ModuleList(ResidualBlock(hidden, hidden) for _ in range(_check_int("depth", depth)))
        self.norm = nn.LayerNorm(hidden)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}) for this network, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return torch.nn.functional.silu(self.norm(h))


class ScoreMLP(nn.Module):
    """net(x, c_noise, y=None) -> (B, dim) for vector data x of shape (B, dim).

    embedding: "fourier" (Gaussian Fourier features, scale `fourier_scale`) or "sinusoidal".
    num_classes: None (unconditional) or K, with label K the learned null label.
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, embed_dim: int = 128,
                 num_classes: int | None = None, embedding: str = "fourier", fourier_scale: float = 1.0):
        super().__init__()
        self.num_classes = num_classes
        self.trunk = MLPTrunk(dim, hidden, depth)
        self.embed = ConditioningEmbedding(_check_int("embed_dim", embed_dim), hidden, num_classes,
                                           embedding, fourier_scale)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.trunk.check_input(x)
        emb = self.embed(c_noise, y, x.shape[0])
        return self.out(self.trunk(x, emb))
