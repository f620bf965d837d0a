"""Noise-conditional classifiers p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021; Song et al.
2021 sec. 5 / App. I): the score networks' trunk (U-Net encoder or residual MLP) with a pooled linear head.

Guided sampling uses grad_x log p(y | x_t) = grad_x log_softmax(classifier(x_t, t))[y].
`NoiseConditionalClassifier` is the raw network (x, c_noise) -> logits; `ClassifierModel` adds the SDE
and the same preconditioning as ScoreModel, giving (x, t) -> logits, `log_prob` and `grad_log_prob`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..sdes.base import batch_view
from .embeddings import ConditioningEmbedding
from .mlp import MLPTrunk, _check_int
from .parametrization import noise_conditioning
from .unet import UNetEncoder, group_norm


class NoiseConditionalClassifier(nn.Module):
    """net(x, c_noise) -> logits (B, num_classes).

    Images: pass image_size; the trunk is the U-Net encoder (ch, ch_mult, num_res_blocks,
    attn_resolutions, dropout) followed by GroupNorm, SiLU and global average pooling.
    Vectors: leave image_size=None; in_channels is the data dimension and the trunk is the residual
    MLP (hidden, depth).
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int | None = None, *,
                 ch: int = 64, ch_mult=(1, 2, 2), num_res_blocks: int = 2, attn_resolutions=(16,),
                 dropout: float = 0.1, hidden: int = 256, depth: int = 4, embed_dim: int = 128,
                 embedding: str = "fourier", fourier_scale: float | None = None):
        super().__init__()
        self.num_classes = _check_int("num_classes", num_classes, minimum=2)
        self.image_size = image_size
        if image_size is None:
            self.embed = ConditioningEmbedding(_check_int("embed_dim", embed_dim), hidden, None, embedding,
                                               1.0 if fourier_scale is None else fourier_scale)
            self.trunk = MLPTrunk(in_channels, hidden, depth)
            width = hidden
        else:
            emb_dim = 4 * _check_int("ch", ch)
            self.embed = ConditioningEmbedding(ch, emb_dim, None, embedding,
                                               16.0 if fourier_scale is None else fourier_scale)
            self.trunk = UNetEncoder(in_channels, image_size, ch, ch_mult, num_res_blocks, attn_resolutions,
                                     dropout, emb_dim)
            self.norm = group_norm(self.trunk.out_channels)
            width = self.trunk.out_channels
        self.head = nn.Linear(width, self.num_classes)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        self.trunk.check_input(x)
        emb = self.embed(c_noise, None, x.shape[0])
        if self.image_size is None:
            return self.head(self.trunk(x, emb))
        h, _ = self.trunk(x, emb)
        return self.head(F.silu(self.norm(h)).mean(dim=(2, 3)))


class ClassifierModel(nn.Module):
    """(x_t, t) -> logits of p(y | x_t): a raw classifier with the SDE's preconditioning c_in, c_noise."""

    def __init__(self, net: nn.Module, sde, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.sde = sde
        if not (isinstance(sigma_data, (int, float)) and sigma_data > 0):
            raise ValueError(f"sigma_data={sigma_data!r} is not allowed: it must be a number > 0")
        self.sigma_data = float(sigma_data)

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(t) or t.dim() == 0:
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},) (one time per sample), got {tuple(t.shape)}")
        _, _, c_in, c_noise = noise_conditioning(self.sde, t, self.sigma_data)
        return self.net(batch_view(c_in, x) * x, c_noise)

    def log_prob(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | x_t), shape (B,)."""
        return F.log_softmax(self(x, t), dim=1).gather(1, y.long()[:, None]).squeeze(1)

    def grad_log_prob(self, y):
        """A callable (x, t) -> grad_x log p(y | x_t) shaped like x (y: (B,) labels or one int)."""

        def grad(x, t):
            labels = torch.full((x.shape[0],), y, dtype=torch.long, device=x.device) if isinstance(y, int) else y
            with torch.enable_grad():
                xr = x.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self.log_prob(xr, t, labels).sum(), xr)
            return g

        return grad
