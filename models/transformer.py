"""Transformer reference models: pre-LN and post-LN encoder blocks and stacks, a causal decoder block,
and a padding-masked encoder. Factories return ``(module, example_inputs)``; ``*_handwritten``
twins spell LayerNorm out in primitive ops.

Attributes read by ``ln-deploy check``: ``causal`` (outputs at position t depend only on 0..t) and
``padding_mask_input`` (the name of a [batch, seq] input where 1 = token, 0 = padding).
"""

import torch
from torch import nn

from _layers import MLP, SelfAttention, layer_norm, randomize_norms

D, HEADS, FF = 64, 4, 128


class EncoderBlock(nn.Module):
    """pre_ln: x + f(LN(x)) (GPT-2, ViT); post-LN: LN(x + f(x)) (the original Transformer, BERT)."""

    def __init__(self, dim=D, heads=HEADS, ff=FF, pre_ln=True, causal=False, handwritten=False):
        super().__init__()
        self.pre_ln = pre_ln
        self.attn = SelfAttention(dim, heads, causal=causal)
        self.mlp = MLP(dim, ff)
        self.norm1 = layer_norm(dim, handwritten)
        self.norm2 = layer_norm(dim, handwritten)

    def forward(self, x, mask=None):
        if self.pre_ln:
            x = x + self.attn(self.norm1(x), mask)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, mask))
        return self.norm2(x + self.mlp(x))


class Encoder(nn.Module):
    causal = False

    def __init__(self, layers=2, dim=D, heads=HEADS, ff=FF, pre_ln=True, causal=False, handwritten=False):
        super().__init__()
        self.causal = causal
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, heads, ff, pre_ln, causal, handwritten) for _ in range(layers))
        # Pre-LN stacks end with a final norm (GPT-2's ln_f); post-LN outputs are already normalized.
        self.final_norm = layer_norm(dim, handwritten) if pre_ln else None

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x) if self.final_norm is not None else x


class MaskedEncoder(Encoder):
    """An encoder over padded batches: ``mask`` [batch, seq] marks real tokens with 1."""

    padding_mask_input = "mask"

    def forward(self, x, mask):
        for block in self.blocks:
            x = block(x, mask)
        return self.final_norm(x)


def _make(model, *shape, seed=0):
    torch.manual_seed(seed)
    randomize_norms(model, seed)
    return model.eval(), (torch.randn(*shape),)


def _build(handwritten=False, **kw):
    torch.manual_seed(0)
    return Encoder(handwritten=handwritten, **kw)


def pre_ln_encoder_block():
    return _make(_build(layers=1, pre_ln=True), 2, 8, D)


def post_ln_encoder_block():
    return _make(_build(layers=1, pre_ln=False), 2, 8, D)


def pre_ln_encoder():
    return _make(_build(layers=2, pre_ln=True), 2, 8, D)


def post_ln_encoder():
    return _make(_build(layers=2, pre_ln=False), 2, 8, D)


def causal_decoder_block():
    return _make(_build(layers=1, pre_ln=True, causal=True), 2, 8, D)


def masked_encoder():
    torch.manual_seed(0)
    model = MaskedEncoder(layers=2, pre_ln=True)
    model, (x,) = _make(model, 2, 8, D)
    mask = torch.ones(2, 8)
    mask[1, 5:] = 0  # the second sequence has 3 padding positions
    return model, (x, mask)


def pre_ln_encoder_block_handwritten():
    return _make(_build(layers=1, pre_ln=True, handwritten=True), 2, 8, D)


def post_ln_encoder_block_handwritten():
    return _make(_build(layers=1, pre_ln=False, handwritten=True), 2, 8, D)


def pre_ln_encoder_handwritten():
    return _make(_build(layers=2, pre_ln=True, handwritten=True), 2, 8, D)


def post_ln_encoder_handwritten():
    return _make(_build(layers=2, pre_ln=False, handwritten=True), 2, 8, D)


def causal_decoder_block_handwritten():
    return _make(_build(layers=1, pre_ln=True, causal=True, handwritten=True), 2, 8, D)


def encoder(layers=12, dim=256, heads=4, pre_ln=True, handwritten=False, batch=2, seq=16):
    """A deeper encoder for benchmarks (not a zero-argument factory: wrap it, e.g. with functools.partial)."""
    torch.manual_seed(0)
    model = Encoder(layers=layers, dim=dim, heads=heads, ff=4 * dim, pre_ln=pre_ln, handwritten=handwritten)
    return _make(model, batch, seq, dim)


def encoder_12x256():
    """The 12-layer d=256 pre-LN encoder that the check benchmark measures."""
    return encoder(12, 256)
