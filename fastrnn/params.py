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


GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # G: blocks of H columns in a layer's Wxh, Whh and bh
CELLS = tuple(GATES)


def rnn_shapes(vocab_size, hidden_size):
    """Names and shapes of a vanilla RNN's parameters, in buffer order."""
    return model_shapes("rnn", vocab_size, hidden_size, 1)


def layer_names(layer):
    """Names of layer l's parameters: Wxh, Whh, bh for layer 0; Wxh1, Whh1, bh1 for layer 1, ..."""
    suffix = str(layer) if layer else ""
    return "Wxh" + suffix, "Whh" + suffix, "bh" + suffix


def model_shapes(cell, vocab_size, hidden_size, num_layers=1):
    """Names and shapes of a model's parameters, in buffer order: the layers bottom up, then the output layer.

    Layer l of a cell with G gate blocks (rnn 1, gru 3, lstm 4):
        Wxh: (V, G*H) for layer 0 (one-hot input as a row lookup), (H, G*H) above (reads the layer below)
        Whh: (H, G*H); bh: (G*H,)
    Output: Why: (H, V); by: (V,). A one-layer rnn has exactly the vanilla RNN's layout above.
    """
    if cell not in GATES:
        raise ValueError(f"unknown cell {cell!r}; choose from {', '.join(CELLS)}")
    V, H, G = int(vocab_size), int(hidden_size), GATES[cell]
    shapes = []
    for layer in range(int(num_layers)):
        wx, wh, b = layer_names(layer)
        shapes += [(wx, (V if layer == 0 else H, G * H)), (wh, (H, G * H)), (b, (G * H,))]
    return shapes + [("Why", (H, V)), ("by", (V,))]


def arch_of(P):
    """(cell, num_layers, hidden_size) of a parameter dict, read from its shapes and names."""
    H, GH = P["Whh"].shape
    G = GH // H
    cell = {g: name for name, g in GATES.items()}.get(G)
    if cell is None or G * H != GH:
        raise ValueError(f"Whh of shape {P['Whh'].shape} fits no cell")
    layers = 1
    while ("Whh" + str(layers)) in P:
        layers += 1
    return cell, layers, H


def state_size(cell, hidden_size, num_layers=1):
    """Width S of the carried state (N, S): per layer, h (H values), then c (H values) for an lstm."""
    return int(num_layers) * int(hidden_size) * (2 if cell == "lstm" else 1)


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
