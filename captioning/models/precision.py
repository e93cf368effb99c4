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
which keeps small float16 gradients from flushing to zero.
"""

from __future__ import annotations

import contextlib

import keras

from captioning.config import RuntimeConfig

MIXED_POLICY = "mixed_float16"


def policy_name(runtime: RuntimeConfig) -> str:
    return MIXED_POLICY if runtime.mixed_precision else "float32"


@contextlib.contextmanager
def precision_policy(runtime: RuntimeConfig):
    """Sets the global Keras dtype policy for the models built inside the block."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy_name(runtime))
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
