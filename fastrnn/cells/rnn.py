"""The vanilla tanh RNN (min-char-rnn's): h_t = tanh(x_t @ Wxh + h_{t-1} @ Whh + bh).

One gate block; the state is h. The one-layer model without dropout has a whole-step kernel (kernels/lm.py).
Reference: fastrnn.reference.rnn_cell_forward/backward; kernels: fastrnn/kernels/rnn.py.
"""

from fastrnn.cells.base import Cell, register
from fastrnn.reference import input_backward, input_forward, rnn_cell_backward, rnn_cell_forward


def forward(inp, W, state0):
    """The reference layer (fastrnn.cells.base): hs = tanh(input side + h_{t-1} @ Whh), from h0 = state0[0]."""
    Wxh, Whh, bh = W
    return (rnn_cell_forward(input_forward(inp, Wxh, bh), state0[0], Whh),), ()


def backward(dhs, inp, W, dW, state0, seqs, cache):
    dz, dh0 = rnn_cell_backward(dhs, state0[0], seqs[0], W[1], dW[1])
    return input_backward(dz, inp, W[0], dW[0], dW[2]), (dh0,)


def kernels():
    from fastrnn.kernels import rnn

    return rnn.LAYER


RNN = register(Cell(name="rnn", gates=1, forward=forward, backward=backward, kernels=kernels, torch=("RNN", (0,)),
                    fused=True, summary="vanilla tanh"))
