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

from fastrnn import cells


def layer_names(layer):
    """Names of layer l's weights and bias (every cell has them): Wxh, Whh, bh for layer 0; Wxh1, Whh1, bh1 for
    layer 1, ... (a cell's own parameters follow: Cell.layer_names)."""
    suffix = str(layer) if layer else ""
    return "Wxh" + suffix, "Whh" + suffix, "bh" + suffix


def model_shapes(cell, vocab_size, hidden_size, num_layers=1):
    """Names and shapes of a model's parameters, in buffer order: the layers bottom up, then the output layer.

    Layer l of a cell (fastrnn.cells: a name or a Cell) with G gate blocks:
        Wxh: (V, G*H) for layer 0 (one-hot input as a row lookup), (H, G*H) above (reads the layer below)
        Whh: (H, G*H); bh: (G*H,); then the cell's extras, if any (Cell.extras)
    Output: Why: (H, V); by: (V,). A one-layer rnn has exactly the vanilla RNN's layout above.
    """
    cell = cells.get(cell)
    shapes = []
    for layer in range(int(num_layers)):
        shapes += cell.layer_shapes(layer, vocab_size, hidden_size)
    return shapes + [("Why", (int(hidden_size), int(vocab_size))), ("by", (int(vocab_size),))]


def model_layout(cell, vocab_size, hidden_size, num_layers=1):
    """The Layout of a model's parameters (model_shapes), whose views carry the model's cell (Params)."""
    cell = cells.get(cell)
    return Layout(model_shapes(cell, vocab_size, hidden_size, num_layers), (cell, num_layers, hidden_size))


def state_size(cell, hidden_size, num_layers=1):
    """Width S of the carried state (N, S): per layer, h (H values), then c (H values) for an lstm (a cell: a name
    or a Cell; Cell.state)."""
    return cells.get(cell).state_size(hidden_size, num_layers)


class Params(dict):
    """The named parameter arrays of one model (the views of Layout.views) and what the model is: `cell` (a
    fastrnn.cells.Cell), `layers`, `hidden_size`. Every backend reads the cell from here; nothing derives it
    from the arrays' shapes."""

    def __init__(self, arrays, cell, layers, hidden_size):
        super().__init__(arrays)
        self.cell, self.layers, self.hidden_size = cells.get(cell), int(layers), int(hidden_size)

    def like(self, arrays):
        """Other arrays (a dict by the same names) as Params of this model."""
        return Params(arrays, self.cell, self.layers, self.hidden_size)

    def astype(self, dtype):
        """The parameters in `dtype` (copies where the dtype differs), as Params of this model."""
        return self.like({k: np.asarray(v, dtype=dtype) for k, v in self.items()})


def arch_of(P):
    """(cell name, num_layers, hidden_size) of the model whose parameters P (Params) carry them."""
    if not isinstance(P, Params):
        raise TypeError("the parameters do not say which model they are: make them with "
                        "fastrnn.params.model_layout(...).views(flat) or a fastrnn.model.Model")
    return P.cell.name, P.layers, P.hidden_size


class Layout:
    """Offsets of named arrays inside one flat buffer."""

    def __init__(self, shapes, arch=None):
        """shapes: [(name, shape)] in buffer order; arch: (cell, layers, hidden_size) of the model, if the layout
        is a model's (model_layout): its views are then Params."""
        self.arch = arch
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
        """dict name -> view of `flat` (no copy): Params if the layout is a model's."""
        if flat.ndim != 1 or flat.shape[0] != self.size:
            raise ValueError(f"flat buffer has shape {flat.shape}, layout needs ({self.size},)")
        views = {name: flat[a:b].reshape(shape) for name, (a, b, shape) in self.offsets.items()}
        return views if self.arch is None else Params(views, *self.arch)

    def init(self, rng, dtype, init_scale):
        """A new parameter buffer: weight matrices ~ N(0, init_scale^2) as min-char-rnn, biases zero."""
        flat = self.zeros(dtype)
        views = self.views(flat)
        for name, (_, _, shape) in self.offsets.items():
            if len(shape) >= 2:
                views[name][...] = rng.standard_normal(shape) * init_scale
        return flat
