"""Adam as one fused TensorFlow kernel per weight.

Keras' Adam updates a weight in about a dozen element-wise operations (the two moments, the
square root, the division, three assignments), each a pass over the weight and its slots.
TensorFlow's ``ResourceApplyAdam`` does the same arithmetic in one pass:

    m = beta_1 m + (1 - beta_1) g;  v = beta_2 v + (1 - beta_2) g^2
    w -= learning_rate sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)

which is Keras' own update (keras.optimizers.Adam.update_step), so ``FusedAdam`` is a
drop-in subclass: the same slots (momentum, velocity), so the same checkpoints, and the
same weights after training (``tests/test_models.py::test_fused_adam_matches_keras_adam``).
Sparse gradients (an embedding's rows) and amsgrad take Keras' own path. On the Flickr8k
attention step it saves about 3 % of the CPU time (docs/results.md).

    model.compile(optimizer=FusedAdam(learning_rate, clipnorm=5.0), ...)
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="captioning")
class FusedAdam(keras.optimizers.Adam):
    """keras.optimizers.Adam whose dense updates run as one ``ResourceApplyAdam`` each."""

    def update_step(self, gradient, variable, learning_rate):
        if isinstance(gradient, tf.IndexedSlices) or self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = ops.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=ops.power(ops.cast(self.beta_1, dtype), step),
            beta2_power=ops.power(ops.cast(self.beta_2, dtype), step),
            lr=ops.cast(learning_rate, dtype), beta1=ops.cast(self.beta_1, dtype),
            beta2=ops.cast(self.beta_2, dtype), epsilon=ops.cast(self.epsilon, dtype),
            grad=ops.cast(gradient, dtype), use_locking=False)
