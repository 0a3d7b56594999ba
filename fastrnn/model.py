"""The model: parameter layout, initialisation and the backend that computes it.

A backend is a module with the same functions as `fastrnn.reference` (forward_backward, forward_loss, step,
clip_gradients and the optimizer updates): `fastrnn.reference` (pure NumPy) or `fastrnn.kernels` (numba).
"""

import numpy as np

from fastrnn import cells
from fastrnn.errors import ConfigError
from fastrnn.config import INITS
from fastrnn.params import model_layout


def get_backend(name):
    """The backend module for `name` ('numba' or 'numpy')."""
    if name == "numpy":
        from fastrnn import reference

        return reference
    if name == "numba":
        from fastrnn import kernels

        return kernels
    raise ConfigError(f"unknown backend {name!r}; choose numba or numpy")


class Model:
    """Shape and parameters of a character-level language model: L layers of one cell under a softmax.

    model: the cell's name (fastrnn.cells); cell: the Cell. flat: (P,) the parameter buffer; P: the named views
    into it, which carry the cell (fastrnn.params.Params).
    """

    def __init__(self, vocab_size, hidden_size, dtype="float32", model="rnn", num_layers=1):
        if model not in cells.names():
            raise ConfigError(f"unknown model {model!r}; choose from {', '.join(cells.names())}")
        if int(num_layers) < 1:
            raise ConfigError(f"--num-layers must be >= 1, got {num_layers}")
        self.model = model
        self.cell = cells.get(model)
        self.num_layers = int(num_layers)
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        self.dtype = np.dtype(dtype)
        self.layout = model_layout(self.cell, self.vocab_size, self.hidden_size, self.num_layers)
        self.flat = self.layout.zeros(self.dtype)
        self.P = self.layout.views(self.flat)

    @property
    def state_size(self):
        return self.cell.state_size(self.hidden_size, self.num_layers)

    def init(self, rng, init_scale, init="auto"):
        """Initialise the parameters.

        normal:     every weight matrix ~ N(0, init_scale^2), biases 0 (min-char-rnn);
        xavier:     every H-column gate block of a weight matrix ~ U(-a, a), a = sqrt(6 / (fan_in + H)),
                    the output layer likewise, biases 0 (Glorot & Bengio 2010);
        orthogonal: as xavier, but each recurrent gate block Whh[:, k*H:(k+1)*H] a random orthogonal matrix
                    (Saxe et al. 2014), which keeps the recurrent product's scale through time;
        auto:       xavier for every cell: measured best at equal steps for rnn by benchmarks/init_choice.py
                    (val 2.25 against 2.89 for normal after 300 steps, H128, tiny Shakespeare); normal stays
                    min-char-rnn's exact behaviour.
        Then the cell's own rule (Cell.init), whatever the init: an lstm's forget-gate biases start at 1
        (Jozefowicz et al. 2015).
        """
        if init not in INITS:
            raise ConfigError(f"unknown init {init!r}; choose from {', '.join(INITS)}")
        if init == "auto":
            init = "xavier"
        if init == "normal":
            self.flat[...] = self.layout.init(rng, self.dtype, init_scale)
        else:
            self.flat[...] = 0
            H, G = self.hidden_size, self.cell.gates
            for l in range(self.num_layers):
                wx, wh = self.cell.layer_names(l)[:2]
                for name in (wx, wh):
                    W = self.P[name]
                    for k in range(G):
                        if init == "orthogonal" and name == wh:
                            q, r = np.linalg.qr(rng.standard_normal((H, H)))
                            W[:, k * H:(k + 1) * H] = q * np.sign(np.diag(r))
                        else:
                            a = np.sqrt(6.0 / (W.shape[0] + H))
                            W[:, k * H:(k + 1) * H] = rng.uniform(-a, a, (W.shape[0], H))
            a = np.sqrt(6.0 / (H + self.vocab_size))
            self.P["Why"][...] = rng.uniform(-a, a, self.P["Why"].shape)
        if self.cell.init is not None:
            for l in range(self.num_layers):
                short = self.cell.layer_names(0)
                self.cell.init({k: self.P[name] for k, name in zip(short, self.cell.layer_names(l))}, self.hidden_size)
        return self

    def load_flat(self, flat):
        if flat.shape != self.flat.shape:
            raise ConfigError(f"parameter buffer has {flat.size} values, the model needs {self.flat.size}")
        self.flat[...] = flat
        return self

    def zero_state(self, batch_size):
        return np.zeros((batch_size, self.state_size), dtype=self.dtype)  # (N, S)

    def describe(self):
        return {"model": self.model, "num_layers": self.num_layers, "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size, "dtype": self.dtype.name, "parameters": int(self.layout.size)}
