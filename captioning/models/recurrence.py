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

GRU cells must have Keras' default ``reset_after=True`` (separate input and recurrent biases).
"""

from __future__ import annotations

from keras import layers, ops


def input_gates(cell, inputs, first_row: int = 0, bias: bool = True):
    """inputs: (..., width) -> their part of the gate pre-activations (..., gate_width).

    first_row: where ``inputs`` start in the cell's input (the rows of its kernel they
    multiply); bias: add the input-side bias (once per step: give it to one part only).
    """
    kernel = cell.kernel[first_row:first_row + inputs.shape[-1]]  # (width, gate_width)
    gates = ops.matmul(inputs, ops.cast(kernel, inputs.dtype))
    if bias and cell.use_bias:
        input_bias = cell.bias if isinstance(cell, layers.LSTMCell) else cell.bias[0]  # GRU: (2, gate_width)
        gates = gates + ops.cast(input_bias, inputs.dtype)
    return gates


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
