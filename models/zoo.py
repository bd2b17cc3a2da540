"""The public-architecture zoo: models written by others (torch.nn, Hugging Face transformers, timm,
torchvision), built with random weights from their constructors or configs (never a download) and
small enough for a 2-core CPU. Every entry of ``ZOO`` is an ordinary SPEC factory:
``models/zoo.py:hf_llama`` works with every ``ln-deploy`` command.

The wrappers are the ones a user writes: take the model's tensor input(s) positionally and return its
main tensor output (``last_hidden_state``, or the model's own output for torch.nn/timm/torchvision).
Normalization parameters are perturbed after construction (constructors set scales to 1 and biases to
0, which hides a fusion that drops a scale or a bias, or Gemma's ``1 + weight``); the perturbation is
drawn from the RNG that ``ln_deploy`` seeds around the factory call, so export and check build the
same weights.

torchvision (and timm, which imports it) is used without its compiled ops: the registry's torchvision
build for torch 2.13 is a CUDA build whose ``_C.so`` cannot load beside the CPU torch; see
``_import_torchvision`` and docs/zoo.md.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # configs only: nothing may download

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

D, HEADS, FF, LAYERS, VOCAB, SEQ, BATCH = 32, 4, 64, 2, 100, 16, 2
IMAGE = 32


@dataclass(frozen=True)
class Arch:
    name: str  # the factory's name in this file: the SPEC is models/zoo.py:<name>
    source: str  # torch.nn | transformers | timm | torchvision
    norm: str  # the normalization form it exercises
    factory: Callable
    package: str = "torch"  # the import the factory needs (the zoo skips an entry whose package is missing)


# --- helpers -------------------------------------------------------------------------------------


def perturb_norms(model: nn.Module, scale: float = 0.2) -> nn.Module:
    """Give every normalization module non-trivial scales and shifts (in place). A norm is any module
    whose class name ends in ``Norm``/``LayerNorm``/``RMSNorm`` (each library spells its own)."""
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__.endswith("Norm") or isinstance(m, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)):
                for p in m.parameters(recurse=False):
                    p.add_(torch.randn_like(p) * scale)
    return model


def _ids():
    return torch.randint(0, VOCAB, (BATCH, SEQ))


def _image():
    return torch.randn(BATCH, 3, IMAGE, IMAGE)


class HFOutput(nn.Module):
    """A Hugging Face model behind the wrapper users write: positional tensors in (passed as the named
    keyword arguments), ``last_hidden_state`` out."""

    def __init__(self, model, *keys):
        super().__init__()
        self.m = model
        self.keys = keys or ("input_ids",)

    def forward(self, *inputs):
        return self.m(**dict(zip(self.keys, inputs))).last_hidden_state


class HFIdsMask(HFOutput):
    """An encoder over padded batches (``attention_mask``: 1 = token, 0 = padding)."""

    padding_mask_input = "attention_mask"

    def __init__(self, model):
        super().__init__(model, "input_ids", "attention_mask")

    def forward(self, input_ids, attention_mask):
        return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class HFCausal(HFOutput):
    causal = True  # check: outputs at position t depend on positions <= t only

    def forward(self, input_ids):
        return self.m(input_ids=input_ids, use_cache=False).last_hidden_state


def _hf(model, example, wrapper=HFOutput):
    return perturb_norms(wrapper(model)), example


def _transformers():
    if importlib.util.find_spec("torchvision") is not None:  # transformers imports it where it finds it
        _import_torchvision()
    import transformers

    return transformers


def zoo_packages_dir() -> str:
    """Where scripts/install_zoo_packages.sh puts timm and torchvision: an overlay beside the
    environment, not in it (installed in it, torchvision breaks ``import transformers``' models too)."""
    return os.environ.get("LN_DEPLOY_ZOO_PACKAGES") or os.path.join(sys.prefix, "zoo-packages")


def add_zoo_packages() -> None:
    """Put the overlay on ``sys.path`` (last, so the environment's own packages win) and make torchvision
    importable there (see ``_import_torchvision``). Done before anything imports torchvision, so that
    transformers, which imports it when it finds it, finds it working."""
    where = zoo_packages_dir()
    if os.path.isdir(where) and where not in sys.path:
        sys.path.append(where)
        importlib.invalidate_caches()
    if importlib.util.find_spec("torchvision") is not None:
        _import_torchvision()


def available(arch: "Arch") -> bool:
    if arch.package in ("timm", "torchvision"):
        add_zoo_packages()
    return importlib.util.find_spec(arch.package) is not None


def _import_torchvision():
    """``import torchvision``, also where its compiled ops cannot load.

    torchvision's ``extension.py`` tolerates a ``_C.so`` that fails to load (every op then raises
    "Couldn't load custom C++ ops" when called), but ``_meta_registrations.py`` registers fake kernels
    for ``torchvision::nms`` and ``torchvision::qnms`` unconditionally, and ``torch.library`` refuses
    that for an operator nobody defined: "operator torchvision::nms does not exist"
    (pytorch/vision#9337; the guard is pytorch/vision#9649, not released). That is the case beside the
    CPU torch 2.13, whose registry torchvision is a CUDA build. Where (and only where) that is the
    failure, define the two schemas exactly as torchvision's C++ does, with no kernel, and import
    again: the pure-Python models load; ``nms``/``qnms`` still raise torchvision's own error.
    """
    global _TORCHVISION_SCHEMAS
    try:
        import torchvision

        return torchvision
    except RuntimeError as e:
        if "torchvision::nms does not exist" not in str(e) or _TORCHVISION_SCHEMAS is not None:
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _TORCHVISION_SCHEMAS = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        _TORCHVISION_SCHEMAS.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision

    return torchvision


_TORCHVISION_SCHEMAS = None  # kept alive: dropping the Library would remove the schemas


def _timm():
    add_zoo_packages()  # timm imports torchvision
    import timm

    return timm


# --- torch.nn ------------------------------------------------------------------------------------


class _SeqModel(nn.Module):
    def __init__(self, body, causal=False):
        super().__init__()
        self.body = body
        self.causal = causal

    def forward(self, x):
        return self.body(x)


def nn_encoder_pre_ln():
    """nn.TransformerEncoder, norm_first=True (pre-LN) with a final LayerNorm."""
    layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True, norm_first=True)
    model = nn.TransformerEncoder(layer, LAYERS, norm=nn.LayerNorm(D), enable_nested_tensor=False)
    return perturb_norms(_SeqModel(model)), (torch.randn(BATCH, SEQ, D),)


def nn_encoder_post_ln():
    """nn.TransformerEncoder, norm_first=False (post-LN, the original Transformer), GELU."""
    layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, activation="gelu", batch_first=True)
    model = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
    return perturb_norms(_SeqModel(model)), (torch.randn(BATCH, SEQ, D),)


class _Decoder(nn.Module):
    causal = False  # the memory input is attended everywhere

    def __init__(self):
        super().__init__()
        layer = nn.TransformerDecoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, LAYERS, norm=nn.LayerNorm(D))

    def forward(self, tgt, memory):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], dtype=tgt.dtype)
        return self.decoder(tgt, memory, tgt_mask=mask)


def nn_decoder():
    """nn.TransformerDecoder (causal self-attention, cross-attention to a memory; post-LN layers)."""
    return perturb_norms(_Decoder()), (torch.randn(BATCH, SEQ, D), torch.randn(BATCH, SEQ + 4, D))


class _MHABlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.norm = nn.LayerNorm(D)
        self.ff = nn.Sequential(nn.Linear(D, FF), nn.ReLU(), nn.Linear(FF, D))
        self.norm2 = nn.LayerNorm(D)

    def forward(self, x):
        x = self.norm(x + self.attn(x, x, x, need_weights=False)[0])
        return self.norm2(x + self.ff(x))


def nn_mha_block():
    """nn.MultiheadAttention + residual + nn.LayerNorm, written out as tutorials do."""
    return perturb_norms(_MHABlock()), (torch.randn(BATCH, SEQ, D),)


class _RNNStack(nn.Module):
    """nn.LSTM/nn.GRU layers with a LayerNorm between layers (PyTorch's RNNs have no LN option)."""

    def __init__(self, cell, layers=2):
        super().__init__()
        self.rnns = nn.ModuleList(cell(D if i else 16, D, batch_first=True) for i in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(D) for _ in range(layers))

    def forward(self, x):
        for rnn, norm in zip(self.rnns, self.norms):
            x = norm(rnn(x)[0])
        return x


def nn_ln_lstm_stack():
    return perturb_norms(_RNNStack(nn.LSTM)), (torch.randn(BATCH, SEQ, 16),)


def nn_ln_gru_stack():
    return perturb_norms(_RNNStack(nn.GRU)), (torch.randn(BATCH, SEQ, 16),)


class _RMSMixer(nn.Module):
    """A pre-norm MLP stack over tokens using nn.RMSNorm (as LLaMA-style code written for torch 2.4+)."""

    def __init__(self):
        super().__init__()
        self.norms = nn.ModuleList(nn.RMSNorm(D, eps=1e-6) for _ in range(LAYERS))
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(D, FF), nn.SiLU(), nn.Linear(FF, D)) for _ in range(LAYERS))
        self.final = nn.RMSNorm(D, eps=1e-6)

    def forward(self, x):
        for norm, mlp in zip(self.norms, self.mlps):
            x = x + mlp(norm(x))
        return self.final(x)


def nn_rmsnorm_mlp():
    return perturb_norms(_RMSMixer()), (torch.randn(BATCH, SEQ, D),)


class _TwoAxisLN(nn.Module):
    """F.layer_norm over the last two axes of a [batch, seq, heads, head_dim] view (per-token
    normalization across all heads, with a [heads, head_dim] scale): normalized_shape is not one axis."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(D, D)
        self.weight = nn.Parameter(1 + 0.2 * torch.randn(HEADS, D // HEADS))
        self.bias = nn.Parameter(0.2 * torch.randn(HEADS, D // HEADS))
        self.out = nn.Linear(D, D)

    def forward(self, x):
        h = self.proj(x).unflatten(-1, (HEADS, D // HEADS))
        h = F.layer_norm(h, (HEADS, D // HEADS), self.weight, self.bias, eps=1e-5)
        return self.out(h.flatten(-2))


def nn_layer_norm_two_axes():
    return _TwoAxisLN(), (torch.randn(BATCH, SEQ, D),)


class _ChannelsFirstConv1d(nn.Module):
    """A 1-D conv net on [batch, channels, time] (audio-style) with F.layer_norm over the channel axis:
    transpose → layer_norm → transpose, the channels-first spelling."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(16 if i == 0 else D, D, 3, padding=1) for i in range(LAYERS))
        self.norms = nn.ModuleList(nn.LayerNorm(D) for _ in range(LAYERS))

    def forward(self, x):
        for conv, norm in zip(self.convs, self.norms):
            x = conv(x)
            x = F.gelu(F.layer_norm(x.transpose(1, 2), (D,), norm.weight, norm.bias).transpose(1, 2))
        return x


def nn_conv1d_channels_first_ln():
    return perturb_norms(_ChannelsFirstConv1d()), (torch.randn(BATCH, 16, SEQ),)


# --- transformers (from configs) -----------------------------------------------------------------

_BERTLIKE = dict(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                 intermediate_size=FF, max_position_embeddings=64)
_DECODER = dict(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                intermediate_size=FF, max_position_embeddings=64)


def hf_bert():
    T = _transformers()
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, SEQ - 5:] = 0
    return _hf(T.BertModel(T.BertConfig(**_BERTLIKE)), (_ids(), mask), HFIdsMask)


def hf_distilbert():
    T = _transformers()
    cfg = T.DistilBertConfig(vocab_size=VOCAB, dim=D, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FF,
                             max_position_embeddings=64)
    return _hf(T.DistilBertModel(cfg), (_ids(),))


def hf_roberta():
    T = _transformers()
    return _hf(T.RobertaModel(T.RobertaConfig(**_BERTLIKE, pad_token_id=1)), (_ids() + 2,))


def hf_albert():
    T = _transformers()
    return _hf(T.AlbertModel(T.AlbertConfig(**_BERTLIKE, embedding_size=16)), (_ids(),))


def hf_gpt2():
    T = _transformers()
    cfg = T.GPT2Config(vocab_size=VOCAB, n_embd=D, n_layer=LAYERS, n_head=HEADS, n_positions=64)
    return _hf(T.GPT2Model(cfg), (_ids(),), HFCausal)


def hf_gpt_neo():
    T = _transformers()
    cfg = T.GPTNeoConfig(vocab_size=VOCAB, hidden_size=D, num_layers=LAYERS, num_heads=HEADS,
                         intermediate_size=FF, max_position_embeddings=64, window_size=8,
                         attention_types=[[["global", "local"], 1]])
    return _hf(T.GPTNeoModel(cfg), (_ids(),), HFCausal)


def hf_bloom():
    T = _transformers()
    cfg = T.BloomConfig(vocab_size=VOCAB, hidden_size=D, n_layer=LAYERS, n_head=HEADS)
    return _hf(T.BloomModel(cfg), (_ids(),), HFCausal)


def hf_phi():
    T = _transformers()
    cfg = T.PhiConfig(**_DECODER, partial_rotary_factor=0.5)
    return _hf(T.PhiModel(cfg), (_ids(),), HFCausal)


def hf_llama():
    T = _transformers()
    return _hf(T.LlamaModel(T.LlamaConfig(**_DECODER, num_key_value_heads=2)), (_ids(),), HFCausal)


def hf_mistral():
    T = _transformers()
    cfg = T.MistralConfig(**_DECODER, num_key_value_heads=2, sliding_window=8)
    return _hf(T.MistralModel(cfg), (_ids(),), HFCausal)


def hf_qwen3():
    T = _transformers()
    cfg = T.Qwen3Config(**_DECODER, num_key_value_heads=2, head_dim=8)  # q/k RMSNorm per head too
    return _hf(T.Qwen3Model(cfg), (_ids(),), HFCausal)


def hf_gemma():
    T = _transformers()
    cfg = T.GemmaConfig(**_DECODER, num_key_value_heads=1, head_dim=8)  # RMSNorm with (1 + weight)
    return _hf(T.GemmaModel(cfg), (_ids(),), HFCausal)


def hf_t5_encoder():
    T = _transformers()
    cfg = T.T5Config(vocab_size=VOCAB, d_model=D, num_layers=LAYERS, num_heads=HEADS, d_ff=FF, d_kv=8)
    return _hf(T.T5EncoderModel(cfg), (_ids(),))


class _Seq2Seq(HFOutput):
    """An encoder-decoder run on source ids and decoder ids (teacher forcing): the decoder's states."""

    def __init__(self, model):
        super().__init__(model, "input_ids", "decoder_input_ids")

    def forward(self, input_ids, decoder_input_ids):
        return self.m(input_ids=input_ids, decoder_input_ids=decoder_input_ids, use_cache=False).last_hidden_state


def hf_bart():
    T = _transformers()
    cfg = T.BartConfig(vocab_size=VOCAB, d_model=D, encoder_layers=LAYERS, decoder_layers=LAYERS,
                       encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FF,
                       decoder_ffn_dim=FF, max_position_embeddings=64)
    return _hf(T.BartModel(cfg), (_ids(), torch.randint(3, VOCAB, (BATCH, SEQ // 2))), _Seq2Seq)


def hf_whisper_encoder():
    T = _transformers()
    cfg = T.WhisperConfig(num_mel_bins=16, d_model=D, encoder_layers=LAYERS, encoder_attention_heads=HEADS,
                          encoder_ffn_dim=FF, decoder_layers=1, decoder_attention_heads=HEADS, decoder_ffn_dim=FF,
                          max_source_positions=SEQ, vocab_size=VOCAB, pad_token_id=0,
                          bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    model = T.WhisperModel(cfg).get_encoder()  # expects [batch, mel bins, 2 * max_source_positions] frames
    return _hf(model, (torch.randn(BATCH, 16, 2 * SEQ),), lambda m: HFOutput(m, "input_features"))


_VIT = dict(image_size=IMAGE, patch_size=8, num_channels=3, hidden_size=D, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, intermediate_size=FF)


def hf_vit():
    T = _transformers()
    return _hf(T.ViTModel(T.ViTConfig(**_VIT), add_pooling_layer=False), (_image(),),
               lambda m: HFOutput(m, "pixel_values"))


def hf_swin():
    T = _transformers()
    cfg = T.SwinConfig(image_size=IMAGE, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                       window_size=4, mlp_ratio=2.0)
    return _hf(T.SwinModel(cfg), (_image(),), lambda m: HFOutput(m, "pixel_values"))


def hf_convnext():
    T = _transformers()
    cfg = T.ConvNextConfig(num_channels=3, hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, image_size=IMAGE)
    return _hf(T.ConvNextModel(cfg), (_image(),), lambda m: HFOutput(m, "pixel_values"))


def hf_clip_text():
    T = _transformers()
    cfg = T.CLIPTextConfig(vocab_size=VOCAB, hidden_size=D, intermediate_size=FF, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, max_position_embeddings=64)
    return _hf(T.CLIPTextModel(cfg), (_ids(),), HFCausal)


def hf_clip_vision():
    T = _transformers()
    cfg = T.CLIPVisionConfig(image_size=IMAGE, patch_size=8, hidden_size=D, intermediate_size=FF,
                             num_hidden_layers=LAYERS, num_attention_heads=HEADS)
    return _hf(T.CLIPVisionModel(cfg), (_image(),), lambda m: HFOutput(m, "pixel_values"))


# --- timm (timm.create_model, pretrained=False, small overrides) ---------------------------------

_TIMM_VIT = dict(img_size=IMAGE, patch_size=8, embed_dim=D, depth=LAYERS, num_heads=HEADS, num_classes=10)


def _timm_model(name, **kw):
    return perturb_norms(_timm().create_model(name, pretrained=False, **kw)), (_image(),)


def timm_vit():
    return _timm_model("vit_tiny_patch16_224", **_TIMM_VIT)


def timm_deit():
    return _timm_model("deit_tiny_distilled_patch16_224", **_TIMM_VIT)


def timm_convnext():
    return _timm_model("convnext_atto", depths=(1, 1, 1, 1), dims=(16, 24, 32, 48), num_classes=10)


def timm_swin():
    return _timm_model("swin_tiny_patch4_window7_224", img_size=IMAGE, patch_size=2, window_size=4, embed_dim=16,
                       depths=(1, 1), num_heads=(2, 2), num_classes=10)


def timm_mixer():
    _timm()
    from timm.models.mlp_mixer import MlpMixer  # the registered names fix patch_size themselves

    return perturb_norms(MlpMixer(img_size=IMAGE, patch_size=8, num_blocks=LAYERS, embed_dim=D, num_classes=10)), (_image(),)


def timm_beit():
    return _timm_model("beit_base_patch16_224", **_TIMM_VIT)


def timm_pvt_v2():
    return _timm_model("pvt_v2_b0", embed_dims=(16, 32), depths=(1, 1), num_heads=(1, 2), sr_ratios=(2, 1),
                       mlp_ratios=(2, 2), num_classes=10)


# --- torchvision (constructors with small arguments) ---------------------------------------------


def tv_vit():
    add_zoo_packages()
    tv = _import_torchvision()
    model = tv.models.VisionTransformer(image_size=IMAGE, patch_size=8, num_layers=LAYERS, num_heads=HEADS,
                                        hidden_dim=D, mlp_dim=FF, num_classes=10)
    return perturb_norms(model), (_image(),)


def tv_swin():
    add_zoo_packages()
    tv = _import_torchvision()
    model = tv.models.SwinTransformer(patch_size=[2, 2], embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                      window_size=[4, 4], num_classes=10)
    return perturb_norms(model), (_image(),)


def tv_convnext():
    add_zoo_packages()
    tv = _import_torchvision()
    from torchvision.models.convnext import CNBlockConfig

    model = tv.models.ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)
    return perturb_norms(model), (_image(),)


def tv_maxvit():
    add_zoo_packages()
    tv = _import_torchvision()
    model = tv.models.MaxVit(input_size=(IMAGE, IMAGE), stem_channels=8, partition_size=2, block_channels=[16, 32],
                             block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=10)
    return perturb_norms(model), (_image(),)


# --- the table -----------------------------------------------------------------------------------

ZOO = [
    Arch("nn_encoder_pre_ln", "torch.nn", "pre-LN", nn_encoder_pre_ln),
    Arch("nn_encoder_post_ln", "torch.nn", "post-LN", nn_encoder_post_ln),
    Arch("nn_decoder", "torch.nn", "post-LN (self + cross attention)", nn_decoder),
    Arch("nn_mha_block", "torch.nn", "post-LN (MHA + residual + LN)", nn_mha_block),
    Arch("nn_ln_lstm_stack", "torch.nn", "LN-RNN (LSTM)", nn_ln_lstm_stack),
    Arch("nn_ln_gru_stack", "torch.nn", "LN-RNN (GRU)", nn_ln_gru_stack),
    Arch("nn_rmsnorm_mlp", "torch.nn", "RMSNorm (nn.RMSNorm)", nn_rmsnorm_mlp),
    Arch("nn_layer_norm_two_axes", "torch.nn", "LN over two axes (F.layer_norm)", nn_layer_norm_two_axes),
    Arch("nn_conv1d_channels_first_ln", "torch.nn", "channels-first LN (F.layer_norm)", nn_conv1d_channels_first_ln),
    Arch("hf_bert", "transformers", "post-LN", hf_bert, "transformers"),
    Arch("hf_distilbert", "transformers", "post-LN", hf_distilbert, "transformers"),
    Arch("hf_roberta", "transformers", "post-LN", hf_roberta, "transformers"),
    Arch("hf_albert", "transformers", "post-LN (shared layers)", hf_albert, "transformers"),
    Arch("hf_gpt2", "transformers", "pre-LN", hf_gpt2, "transformers"),
    Arch("hf_gpt_neo", "transformers", "pre-LN", hf_gpt_neo, "transformers"),
    Arch("hf_bloom", "transformers", "pre-LN (+ embedding LN)", hf_bloom, "transformers"),
    Arch("hf_phi", "transformers", "pre-LN (parallel attention)", hf_phi, "transformers"),
    Arch("hf_llama", "transformers", "RMSNorm", hf_llama, "transformers"),
    Arch("hf_mistral", "transformers", "RMSNorm", hf_mistral, "transformers"),
    Arch("hf_qwen3", "transformers", "RMSNorm (+ per-head q/k norm)", hf_qwen3, "transformers"),
    Arch("hf_gemma", "transformers", "Gemma RMSNorm (1 + weight)", hf_gemma, "transformers"),
    Arch("hf_t5_encoder", "transformers", "RMSNorm (T5, no mean)", hf_t5_encoder, "transformers"),
    Arch("hf_bart", "transformers", "post-LN (encoder-decoder)", hf_bart, "transformers"),
    Arch("hf_whisper_encoder", "transformers", "pre-LN (conv front end)", hf_whisper_encoder, "transformers"),
    Arch("hf_vit", "transformers", "pre-LN", hf_vit, "transformers"),
    Arch("hf_swin", "transformers", "pre-LN (windows)", hf_swin, "transformers"),
    Arch("hf_convnext", "transformers", "channels-first LN", hf_convnext, "transformers"),
    Arch("hf_clip_text", "transformers", "pre-LN (causal)", hf_clip_text, "transformers"),
    Arch("hf_clip_vision", "transformers", "pre-LN (+ pre-encoder LN)", hf_clip_vision, "transformers"),
    Arch("timm_vit", "timm", "pre-LN", timm_vit, "timm"),
    Arch("timm_deit", "timm", "pre-LN (distilled)", timm_deit, "timm"),
    Arch("timm_convnext", "timm", "channels-first LN", timm_convnext, "timm"),
    Arch("timm_swin", "timm", "pre-LN (windows)", timm_swin, "timm"),
    Arch("timm_mixer", "timm", "pre-LN (token mixing)", timm_mixer, "timm"),
    Arch("timm_beit", "timm", "pre-LN (layer scale, rel. position bias)", timm_beit, "timm"),
    Arch("timm_pvt_v2", "timm", "pre-LN (spatial-reduction attention)", timm_pvt_v2, "timm"),
    Arch("tv_vit", "torchvision", "pre-LN", tv_vit, "torchvision"),
    Arch("tv_swin", "torchvision", "pre-LN (windows)", tv_swin, "torchvision"),
    Arch("tv_convnext", "torchvision", "channels-first LN (LayerNorm2d)", tv_convnext, "torchvision"),
    Arch("tv_maxvit", "torchvision", "pre-LN (+ BatchNorm MBConv)", tv_maxvit, "torchvision"),
]

BY_NAME = {a.name: a for a in ZOO}


def spec(name: str) -> str:
    """The SPEC string of a zoo entry, with this file's absolute path."""
    return f"{os.path.abspath(__file__)}:{BY_NAME[name].name}"
