"""A ConvNeXt-style block with a channels-first LayerNorm (normalization over axis 1 of NCHW).

``convnext_block`` spells the channels-first norm as permute → nn.LayerNorm → permute (timm's way);
``convnext_block_handwritten`` writes it out over axis 1 as ConvNeXt's reference code does.
"""

import torch
from torch import nn

from _layers import randomize_norms

C = 32


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor."""

    def __init__(self, channels, eps=1e-6, handwritten=False):
        super().__init__()
        self.handwritten = handwritten
        self.norm = None if handwritten else nn.LayerNorm(channels, eps=eps)
        self.weight = nn.Parameter(torch.ones(channels)) if handwritten else None
        self.bias = nn.Parameter(torch.zeros(channels)) if handwritten else None
        self.eps = eps

    def forward(self, x):
        if not self.handwritten:
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    """Downsampling norm (channels-first), then dwconv 7x7 → LN (channels-last) → MLP, with a residual."""

    def __init__(self, channels=C, handwritten=False):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, kernel_size=2, stride=2)
        self.stem_norm = LayerNorm2d(channels, handwritten=handwritten)
        self.dwconv = nn.Conv2d(channels, channels, kernel_size=7, padding=3, groups=channels)
        self.norm = LayerNorm2d(channels, handwritten=handwritten)
        self.pw1 = nn.Conv2d(channels, 4 * channels, 1)
        self.pw2 = nn.Conv2d(4 * channels, channels, 1)

    def forward(self, x):
        x = self.stem_norm(self.stem(x))
        return x + self.pw2(torch.nn.functional.gelu(self.pw1(self.norm(self.dwconv(x)))))


def _make(handwritten):
    torch.manual_seed(0)
    model = ConvNeXtBlock(handwritten=handwritten)
    randomize_norms(model)
    return model.eval(), (torch.randn(2, 3, 16, 16),)


def convnext_block():
    return _make(False)


def convnext_block_handwritten():
    return _make(True)
