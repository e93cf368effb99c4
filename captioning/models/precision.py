"""Mixed precision: the ``runtime.mixed_precision`` switch.

Keras layers take their compute dtype from the global dtype policy when they are built;
``precision_policy`` sets it for the models built inside it and restores it afterwards,
so one process can hold a float32 and a mixed-precision model side by side:

    with precision_policy(config.runtime):
        model = build_model(config, vocabulary.size)   # float16 compute, float32 weights

Under "mixed_float16" every layer computes in float16 while its weights stay float32;
the decoders cast their logits (and attention scores before the softmax) to float32, so
the loss, the softmax and beam search's log-probabilities never run in float16, and
``model.compile`` wraps the optimizer in Keras' LossScaleOptimizer (dynamic loss scaling),
which keeps small float16 gradients from flushing to zero. With
``runtime.mixed_precision_dtype = "bfloat16"`` the policy is "mixed_bfloat16": the same
float32 weights, logits and loss, compute in bfloat16, whose float32 exponent range needs no
loss scaling (Keras wraps the optimizer for "mixed_float16" only).
"""

from __future__ import annotations

import contextlib

import keras

from captioning.config import RuntimeConfig
from captioning.models.decoder_base import check_choice

# runtime.mixed_precision_dtype -> the Keras dtype policy mixed precision uses.
MIXED_POLICIES = {"float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def check_precision(runtime: RuntimeConfig) -> None:
    """ConfigError unless ``runtime.mixed_precision_dtype`` names a policy (validate.py runs it too)."""
    check_choice("mixed precision dtype", runtime.mixed_precision_dtype, "runtime.mixed_precision_dtype",
                 MIXED_POLICIES)


def policy_name(runtime: RuntimeConfig) -> str:
    """The Keras dtype policy of ``runtime``: "float32", "mixed_float16" or "mixed_bfloat16"."""
    if not runtime.mixed_precision:
        return "float32"
    check_precision(runtime)
    return MIXED_POLICIES[runtime.mixed_precision_dtype]


@contextlib.contextmanager
def precision_policy(runtime: RuntimeConfig):
    """Sets the global Keras dtype policy for the models built inside the block."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy_name(runtime))
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
