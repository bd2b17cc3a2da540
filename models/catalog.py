"""The bundled reference models, as the specs a user would pass to ``ln-deploy``.

Paths are relative to the repository root; ``spec_path(name)`` makes them absolute.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent

# name -> spec. Every bundled model; its hand-written twin is HANDWRITTEN[name].
BUNDLED = {
    "pre_ln_encoder_block": "models/transformer.py:pre_ln_encoder_block",
    "post_ln_encoder_block": "models/transformer.py:post_ln_encoder_block",
    "pre_ln_encoder": "models/transformer.py:pre_ln_encoder",
    "post_ln_encoder": "models/transformer.py:post_ln_encoder",
    "causal_decoder_block": "models/transformer.py:causal_decoder_block",
    "masked_encoder": "models/transformer.py:masked_encoder",
    "ln_lstm": "models/rnn.py:ln_lstm",
    "ln_gru": "models/rnn.py:ln_gru",
    "stacked_ln_lstm": "models/rnn.py:stacked_ln_lstm",
    "convnext_block": "models/convnext.py:convnext_block",
    "rms_decoder_block": "models/llama.py:rms_decoder_block",
}

# Hand-written-normalization twins (same weights, normalization spelled in primitive ops).
HANDWRITTEN = {
    name: spec + "_handwritten"
    for name, spec in BUNDLED.items()
    if name != "masked_encoder"
}

# Models that must fail a check on purpose.
NEGATIVE_CONTROLS = {"batchnorm_encoder": "models/controls.py:batchnorm_encoder"}

RECURRENT = {"ln_lstm", "ln_gru", "stacked_ln_lstm"}


def spec_path(spec: str) -> str:
    """The spec with its file made absolute, so it works from any working directory."""
    path, _, name = spec.rpartition(":")
    return f"{ROOT.parent / path}:{name}"
