"""A LLaMA-style decoder block: RMSNorm (pre-norm), causal attention, SwiGLU MLP, and a final RMSNorm."""

import torch
from torch import nn

from _layers import SelfAttention, randomize_norms, rms_norm

D, HEADS, FF = 64, 4, 172


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


class RMSDecoderBlock(nn.Module):
    causal = True

    def __init__(self, dim=D, heads=HEADS, ff=FF, handwritten=False):
        super().__init__()
        self.input_norm = rms_norm(dim, handwritten)
        self.attn = SelfAttention(dim, heads, causal=True)
        self.post_attention_norm = rms_norm(dim, handwritten)
        self.mlp = SwiGLU(dim, ff)
        self.final_norm = rms_norm(dim, handwritten)

    def forward(self, x):
        x = x + self.attn(self.input_norm(x))
        x = x + self.mlp(self.post_attention_norm(x))
        return self.final_norm(x)


def _make(handwritten):
    torch.manual_seed(0)
    model = randomize_norms(RMSDecoderBlock(handwritten=handwritten))
    return model.eval(), (torch.randn(2, 8, D),)


def rms_decoder_block():
    return _make(False)


def rms_decoder_block_handwritten():
    return _make(True)
