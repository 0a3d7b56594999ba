"""One flat parameter buffer with named views.

Parameters, gradients and every optimizer state share one layout, so an update is a single flat loop and a
checkpoint is one array per buffer. Views are C-contiguous reshapes of slices of the flat buffer: writing a view
writes the buffer.

Vanilla RNN (letters: V vocabulary, H hidden):

    Wxh: (V, H)   input -> hidden; row v is the pre-activation added for token v (one-hot input as a lookup)
    Whh: (H, H)   hidden -> hidden
    bh:  (H,)
    Why: (H, V)   hidden -> logits
    by:  (V,)

The matrices are the transposes of min-char-rnn's (we keep hidden states as rows, h: (N, H), so every product is
a row-major GEMM over the minibatch): h_t = tanh(Wxh[x_t] + h_{t-1} @ Whh + bh), logits_t = h_t @ Why + by.
"""

import numpy as np


def rnn_shapes(vocab_size, hidden_size):
    """Names and shapes of a vanilla RNN's parameters, in buffer order."""
    V, H = vocab_size, hidden_size
    return [("Wxh", (V, H)), ("Whh", (H, H)), ("bh", (H,)), ("Why", (H, V)), ("by", (V,))]


class Layout:
    """Offsets of named arrays inside one flat buffer."""

    def __init__(self, shapes):
        self.shapes = [(name, tuple(int(d) for d in shape)) for name, shape in shapes]
        self.offsets = {}
        offset = 0
        for name, shape in self.shapes:
            n = int(np.prod(shape)) if shape else 1
            self.offsets[name] = (offset, offset + n, shape)
            offset += n
        self.size = offset

    @property
    def names(self):
        return [name for name, _ in self.shapes]

    def zeros(self, dtype):
        return np.zeros(self.size, dtype=dtype)

    def views(self, flat):
        """dict name -> view of `flat` (no copy)."""
        if flat.ndim != 1 or flat.shape[0] != self.size:
            raise ValueError(f"flat buffer has shape {flat.shape}, layout needs ({self.size},)")
        return {name: flat[a:b].reshape(shape) for name, (a, b, shape) in self.offsets.items()}

    def init(self, rng, dtype, init_scale):
        """A new parameter buffer: weight matrices ~ N(0, init_scale^2) as min-char-rnn, biases zero."""
        flat = self.zeros(dtype)
        views = self.views(flat)
        for name, (_, _, shape) in self.offsets.items():
            if len(shape) >= 2:
                views[name][...] = rng.standard_normal(shape) * init_scale
        return flat
