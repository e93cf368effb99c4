"""LSTM/GRU recurrence with the input side of the matmul taken out of the time loop.

A Keras ``LSTMCell`` computes ``x_t @ kernel + h @ recurrent_kernel + bias`` at every
step. The ``x_t @ kernel`` half does not depend on the previous step, so for a whole
caption it is one large matmul before the loop, (rows * length, width) @ (width, gates),
which runs far closer to the machine's matmul rate than ``length`` small ones. What stays
in the loop is ``h @ recurrent_kernel`` (and, for attention, the context's rows of the
kernel). These functions use the cell's own weights, with Keras' gate order and
activations, so a decoder keeps ``LSTMCell``/``GRUCell`` (and their saved weights) and
``tests/test_models.py`` checks every step against the cell's own ``call``.

    gates = input_gates(cell, embedded, first_row=0)                 # (..., gate_width)
    gates_t = gates[:, t] + input_gates(cell, context, first_row=E, bias=False)
    hidden, state = recurrent_update(cell, gates_t, state)

When nothing but the recurrence is left in the loop (the rnn decoder, and the attention
decoder with ``attention_placement = "output"``), an LSTM with the default activations runs
a whole caption through ``lstm_hidden_sequence``, whose backward pass is written by hand
(1.6x faster than autodiff through the loop on a Flickr8k-sized batch):

    hidden = lstm_hidden_sequence(cell, gates, state)   # gates (length, rows, 4 units) -> (length, rows, units)

GRU cells must have Keras' default ``reset_after=True`` (separate input and recurrent biases).
"""

from __future__ import annotations

import tensorflow as tf
from keras import activations, layers, ops


def input_gates(cell, inputs, first_row: int = 0, bias: bool = True, kernel=None):
    """inputs: (..., width) -> their part of the gate pre-activations (..., gate_width).

    first_row: where ``inputs`` start in the cell's input (the rows of its kernel they
    multiply); bias: add the input-side bias (once per step: give it to one part only);
    kernel: those rows already taken (kernel_blocks), instead of ``first_row``.
    """
    if kernel is None:
        width, rows = inputs.shape[-1], cell.kernel.shape[0]
        kernel = cell.kernel if (first_row, width) == (0, rows) else cell.kernel[first_row:first_row + width]  # (width, gate_width)
    gates = ops.matmul(inputs, ops.cast(kernel, inputs.dtype))
    if bias and cell.use_bias:
        input_bias = cell.bias if isinstance(cell, layers.LSTMCell) else cell.bias[0]  # GRU: (2, gate_width)
        gates = gates + ops.cast(input_bias, inputs.dtype)
    return gates


def kernel_blocks(cell, widths):
    """The cell's kernel rows in consecutive blocks of ``widths`` rows from the first, each
    (width, gate_width): for a cell whose input has several parts. One split, whose gradient
    is one concatenation; a slice per part would make a zero tensor of the whole kernel per
    part and add them."""
    rest = cell.kernel.shape[0] - sum(widths)
    if rest < 0:
        raise ValueError(f"{cell.name}: blocks of {list(widths)} rows exceed the kernel's {cell.kernel.shape[0]}")
    return tf.split(cell.kernel, [*widths, rest] if rest else list(widths), axis=0)[:len(widths)]


def recurrent_update(cell, gates, state):
    """gates: (batch, gate_width), every input-side part summed (bias included); state: the
    cell's state list ([hidden, carry] for LSTM, [hidden] for GRU), each (batch, units).

    Returns (hidden (batch, units), new state list): what ``cell(inputs, state)`` returns.
    """
    hidden = state[0]
    recurrent = ops.matmul(hidden, ops.cast(cell.recurrent_kernel, hidden.dtype))  # (batch, gate_width)
    units = cell.units
    if isinstance(cell, layers.LSTMCell):
        z = gates + recurrent
        input_gate = cell.recurrent_activation(z[:, :units])
        forget_gate = cell.recurrent_activation(z[:, units:2 * units])
        carry = forget_gate * state[1] + input_gate * cell.activation(z[:, 2 * units:3 * units])
        output_gate = cell.recurrent_activation(z[:, 3 * units:])
        hidden = output_gate * cell.activation(carry)
        return hidden, [hidden, carry]
    if not cell.reset_after:
        raise ValueError(f"{cell.name}: recurrent_update needs a GRU cell with reset_after=True")
    if cell.use_bias:
        recurrent = recurrent + ops.cast(cell.bias[1], recurrent.dtype)
    update_gate = cell.recurrent_activation(gates[:, :units] + recurrent[:, :units])
    reset_gate = cell.recurrent_activation(gates[:, units:2 * units] + recurrent[:, units:2 * units])
    candidate = cell.activation(gates[:, 2 * units:] + reset_gate * recurrent[:, 2 * units:])
    hidden = update_gate * state[0] + (1 - update_gate) * candidate
    return hidden, [hidden]


def has_fused_sequence(cell) -> bool:
    """Whether ``lstm_hidden_sequence`` can run this cell: an LSTMCell with Keras' default
    activations (sigmoid gates, tanh candidate and output), the ones its backward pass
    differentiates by hand."""
    return (isinstance(cell, layers.LSTMCell) and cell.activation is activations.tanh
            and cell.recurrent_activation is activations.sigmoid)


def lstm_hidden_sequence(cell, gates, state):
    """An LSTM over a whole caption with a hand-written backward pass.

    gates: (length, rows, 4 * units) time-major, every input-side part summed (bias
    included); state: [hidden, carry], each (rows, units). Returns the hidden states
    (length, rows, units), the same as stepping ``recurrent_update`` (the test
    ``test_fused_lstm_matches_autodiff`` compares values and every gradient).

    Why by hand: autodiff through the time loop computes the recurrent kernel's gradient
    as one small (units x rows) @ (rows x 4 units) matmul per step, summed in the loop, and
    keeps the loop's bookkeeping for every step. Here the backward loop computes only
    what is sequential, each step's gate gradient dz_t and dz_t @ recurrent_kernel^T, and
    the kernel's gradient is one large matmul after it: sum_t h_{t-1}^T dz_t =
    (units x length * rows) @ (length * rows x 4 units). The gate gradients dz are also
    the gradient of ``gates``.
    """
    kernel = ops.cast(cell.recurrent_kernel, gates.dtype)  # (units, 4 * units)
    return _lstm_sequence(gates, state[0], state[1], kernel)


# Each step's elementwise work, a dozen small ops, runs as one XLA kernel: the matmuls stay
# outside (oneDNN's are faster on CPU than XLA's), and a kernel compiles once per shape
# (rows, 4 * units), not per caption length. 1.15x faster over the sequence, forward and
# backward, on a Flickr8k-sized batch (80 rows, 512 units).


@tf.function(jit_compile=True)
def _cell_forward(z, carry, block_scale, block_shift):
    """z (rows, 4 * units), the gate pre-activations; carry (rows, units), c_{t-1} ->
    hidden h_t, carry c_t (rows, units), the gates' sigmoids (rows, 4 * units)."""
    sigmoids = tf.sigmoid(z * block_scale)  # (rows, 4 * units)
    input_gate, forget_gate, candidate, output_gate = _gate_values(sigmoids, block_scale, block_shift)
    carry = forget_gate * carry + input_gate * candidate
    return output_gate * tf.tanh(carry), carry, sigmoids


@tf.function(jit_compile=True)
def _cell_backward(hidden_gradient, output_gradient, carry_gradient, sigmoids, carry, previous_carry, block_scale,
                   block_shift):
    """d loss / d h_t and d loss / d c_t from step t + 1, d loss / d h_t from the outputs
    (rows, units each), step t's saved values -> dz_t (rows, 4 * units), d loss / d c_{t-1} (rows, units)."""
    hidden_gradient = hidden_gradient + output_gradient
    input_gate, forget_gate, candidate, output_gate = _gate_values(sigmoids, block_scale, block_shift)
    carry_tanh = tf.tanh(carry)
    carry_gradient = carry_gradient + hidden_gradient * output_gate * (1 - tf.square(carry_tanh))
    value_gradients = tf.concat(  # d loss / d (i, f, candidate, o): (rows, 4 * units)
        [carry_gradient * candidate, carry_gradient * previous_carry, carry_gradient * input_gate,
         hidden_gradient * carry_tanh], axis=-1)
    # d/dz of s * scale - shift with s = sigmoid(z * scale)
    gate_gradient = value_gradients * (sigmoids * (1 - sigmoids) * (block_scale * block_scale))
    return gate_gradient, carry_gradient * forget_gate


def _gate_values(sigmoids, block_scale, block_shift):
    """sigmoids (rows, 4 * units) -> input gate, forget gate, candidate, output gate (rows, units) each."""
    return tf.split(sigmoids * block_scale - block_shift, 4, axis=-1)


@tf.custom_gradient
def _lstm_sequence(gates, hidden, carry, kernel):
    units = kernel.shape[0]
    # tanh(x) = 2 sigmoid(2x) - 1: one sigmoid over all four gate blocks (Keras' order i, f,
    # c, o) gives every activation, with the candidate's block scaled by 2 and shifted by -1.
    block_scale = tf.repeat(tf.constant([1.0, 1.0, 2.0, 1.0], gates.dtype), units)  # (4 * units,)
    block_shift = tf.repeat(tf.constant([0.0, 0.0, 1.0, 0.0], gates.dtype), units)

    def forward(previous, gates_t):
        hidden_t, carry_t, _ = previous
        return _cell_forward(gates_t + tf.matmul(hidden_t, kernel), carry_t, block_scale, block_shift)

    # hidden and carry states (length, rows, units) and the gates' sigmoids (length, rows,
    # 4 * units), kept for the backward pass
    hiddens, carries, sigmoids = tf.scan(forward, gates, initializer=(hidden, carry, tf.zeros_like(gates[0])))

    def backward(hidden_gradients):
        previous_carries = tf.concat([carry[None], carries[:-1]], axis=0)  # (length, rows, units): c_{t-1}
        transposed_kernel = tf.transpose(kernel)  # (4 * units, units)

        def step_back(following, inputs):
            hidden_gradient, carry_gradient, _ = following  # from step t + 1
            output_gradient_t, sigmoids_t, carry_t, previous_carry = inputs
            gate_gradient, carry_gradient = _cell_backward(hidden_gradient, output_gradient_t, carry_gradient,
                                                           sigmoids_t, carry_t, previous_carry, block_scale, block_shift)
            return tf.matmul(gate_gradient, transposed_kernel), carry_gradient, gate_gradient

        hidden_gradients_back, carry_gradients_back, gate_gradients = tf.scan(
            step_back, (hidden_gradients, sigmoids, carries, previous_carries),
            initializer=(tf.zeros_like(hidden), tf.zeros_like(carry), tf.zeros_like(gates[0])), reverse=True)
        previous_hiddens = tf.concat([hidden[None], hiddens[:-1]], axis=0)  # (length, rows, units): h_{t-1}
        kernel_gradient = tf.matmul(tf.reshape(previous_hiddens, (-1, units)),
                                    tf.reshape(gate_gradients, (-1, 4 * units)), transpose_a=True)  # (units, 4 * units)
        return gate_gradients, hidden_gradients_back[0], carry_gradients_back[0], kernel_gradient

    return hiddens, backward
