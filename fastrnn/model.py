"""The model: parameter layout, initialisation and the backend that computes it.

A backend is a module with the same functions as `fastrnn.reference` (forward_backward, forward_loss, step,
clip_gradients and the optimizer updates): `fastrnn.reference` (pure NumPy) or `fastrnn.kernels` (numba).
"""

import numpy as np

from fastrnn.errors import ConfigError
from fastrnn.params import Layout, rnn_shapes


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
    """Shape and parameters of a character-level RNN language model.

    flat: (P,) the parameter buffer; P: dict of named views into it (see fastrnn.params).
    """

    def __init__(self, vocab_size, hidden_size, dtype="float32", model="rnn"):
        if model != "rnn":
            raise ConfigError(f"unknown model {model!r}; available: rnn")
        self.model = model
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        self.dtype = np.dtype(dtype)
        self.layout = Layout(rnn_shapes(self.vocab_size, self.hidden_size))
        self.flat = self.layout.zeros(self.dtype)
        self.P = self.layout.views(self.flat)

    def init(self, rng, init_scale):
        self.flat[...] = self.layout.init(rng, self.dtype, init_scale)
        return self

    def load_flat(self, flat):
        if flat.shape != self.flat.shape:
            raise ConfigError(f"parameter buffer has {flat.size} values, the model needs {self.flat.size}")
        self.flat[...] = flat
        return self

    def zero_state(self, batch_size):
        return np.zeros((batch_size, self.hidden_size), dtype=self.dtype)  # (N, H)

    def describe(self):
        return {"model": self.model, "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
                "dtype": self.dtype.name, "parameters": int(self.layout.size)}
