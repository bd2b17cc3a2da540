"""SPECs for the precision tests: PyTorch's own encoder blocks (their fp16 conversions hit ONNX Runtime's
NchwcTransformer crash at ORT_ENABLE_ALL) and activation-overflow blocks (fp16 overflows in a strongly
typed engine; ORT's CPU provider hides it). Small and seeded: a few milliseconds each."""

import torch
from torch import nn

D, HEADS, FF = 32, 4, 64


def _encoder(norm_first: bool):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True, norm_first=norm_first)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()
    return model, (torch.randn(2, 8, D),)


def transformer_encoder_pre():
    return _encoder(True)


def transformer_encoder_post():
    return _encoder(False)


class AttentionBlock(nn.Module):
    """An nn.MultiheadAttention block with a residual and a LayerNorm (the pattern of the crash)."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=False)
        self.norm = nn.LayerNorm(D)

    def forward(self, x):  # x: (seq, batch, D): the Transpose(perm=[1,0,2]) inside feeds a MatMul
        a, _ = self.attn(x, x, x, need_weights=False)
        return self.norm(x + a)


def mha_block():
    torch.manual_seed(0)
    return AttentionBlock().eval(), (torch.randn(8, 2, D),)


class OverflowRMSBlock(nn.Module):
    """A residual stream scaled into the hundreds, then a hand-written RMSNorm: its squares pass
    65504 (fp16's largest value), so naive fp16 gives 0/inf; fp32 statistics give ~1e-3 error."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(D, D)
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(D))
        self.out = nn.Linear(D, D)

    def forward(self, x):
        h = 300.0 * x + 100.0 * self.proj(x)
        rms = torch.sqrt((h * h).mean(-1, keepdim=True) + 1e-6)
        return self.out(h / rms * self.weight)


def overflow_rms_block():
    torch.manual_seed(0)
    return OverflowRMSBlock().eval(), (torch.randn(2, 8, D),)
