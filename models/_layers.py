"""Building blocks shared by the reference models. Random weights; nothing is downloaded.

Each normalization comes in two spellings: PyTorch's module (exports as one ONNX op) and a
hand-written twin (exports decomposed, as T5/LLaMA/research code does), so the fusion pass can be
checked against the op count of the ``nn.LayerNorm`` version.
"""

import math

import torch
from torch import nn


class HandLayerNorm(nn.Module):
    """LayerNorm written out: mean, mean of squared deviations, epsilon inside the square root."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).pow(2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class HandRMSNorm(nn.Module):
    """LLaMA's RMSNorm: upcast to fp32, x * rsqrt(mean(x²) + eps), back to the input type, times weight."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def layer_norm(dim, handwritten=False, eps=1e-5):
    return HandLayerNorm(dim, eps) if handwritten else nn.LayerNorm(dim, eps=eps)


def rms_norm(dim, handwritten=False, eps=1e-6):
    return HandRMSNorm(dim, eps) if handwritten else nn.RMSNorm(dim, eps=eps)


def randomize_norms(model, seed=0):
    """Give every normalization a non-trivial scale and bias (fresh ones are 1 and 0, which hides bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.RMSNorm, HandLayerNorm, HandRMSNorm)) or type(m).__name__.endswith("Norm2d"):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


class SelfAttention(nn.Module):
    """Multi-head self-attention with an optional causal mask and an optional key padding mask."""

    def __init__(self, dim, heads, causal=False):
        super().__init__()
        assert dim % heads == 0
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
        if self.causal:
            keep = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            scores = scores.masked_fill(~keep, float("-inf"))
        if mask is not None:  # mask: [b, t], 1 = real token, 0 = padding
            scores = scores.masked_fill(mask[:, None, None, :] < 0.5, float("-inf"))
        out = scores.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))
