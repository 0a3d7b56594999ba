"""What a cell is, and the registry of cells by name.

A Cell is data: everything the rest of fastrnn needs to know of one kind of recurrent layer. The model stacks L
layers of one cell under a softmax; the stack, the reference, the numba kernels, sampling, export, the
initialisation and the carried state read the cell from the model (fastrnn.params.Params carries it), never from
shapes or from a table of names.

Fields:
    name      the --model name
    gates     G: the blocks of H columns of a layer's Wxh (V or H, G*H), Whh (H, G*H) and bh (G*H,)
    state     the vectors each layer carries from step to step (and between minibatches), H values each, h first:
              ("h",), or ("h", "c") for the lstm's cell state; the carried state (N, S) holds them per layer
    extras    the layer's parameters beside Wxh, Whh, bh: ((name, width in units of H), ...), vectors of width*H
              values that follow bh in the buffer (layer l's names take the suffix l as Wxh does: gx, gx1, ...)
    forward   the NumPy reference of one layer over T steps (fastrnn.reference's layer interface):
                  forward(inp, W, state0) -> (seqs, cache)
              inp: (N, T) token ids (layer 0) or (T, N, H) the layer below's output; W: the layer's parameters in
              the order of layer_names; state0: one (N, H) array per name of `state`. seqs: one (T, N, H) array
              per name of `state` (seqs[0] the layer's output hs, seqs[k][-1] the state it ends in).
    backward  backward(dhs, inp, W, dW, state0, seqs, cache) -> (dinp, dstate0): adds into dW (arrays like W),
              dhs: (T, N, H) the gradient w.r.t. hs from above; dinp: (T, N, H) or None for token input;
              dstate0: one (N, H) gradient per name of `state`.
    kernels   a function of no arguments that returns the cell's numba side (imported on first use, so that
              importing the registry stays cheap): an object with
                  buffers(T, N, H, dtype) -> dict, scratch(T, N, H, dtype) -> dict   (see kernels/stack.py)
                  forward(b, ws, x, inp, W, Wp, mask, out, plan, groups)
                  backward(b, ws, dW, x, inp, W, WTp, mask, plan, groups)
                  sample_streams (an njit kernel, see kernels/sample.py), sample_extras(W) -> (n,) array
    init      init(layer, H): after the weight initialisation of Model.init, the cell's own rule for layer
              `layer` (a dict short name -> array: "Wxh", "Whh", "bh" and the extras), in place; or None
    torch     (PyTorch class name, the fastrnn gate block of each PyTorch block) for `export --format torch`, or
              None if PyTorch has no such module
    fused     the one-layer model without dropout has a whole-step kernel (kernels/lm.py: the vanilla rnn only)
    summary   one line for people
"""

import dataclasses
import functools


@dataclasses.dataclass(frozen=True, eq=False)
class Cell:
    name: str
    gates: int
    forward: object
    backward: object
    kernels: object
    state: tuple = ("h",)
    extras: tuple = ()
    init: object = None
    torch: tuple = None
    fused: bool = False
    summary: str = ""

    def __post_init__(self):
        if not self.name or not isinstance(self.gates, int) or self.gates < 1 or not self.state \
                or self.state[0] != "h":
            raise ValueError(f"cell {self.name!r}: a name, gates >= 1 and a state that starts with h are needed")

    def layer_names(self, layer):
        """The names of layer `layer`'s parameters, in buffer order: Wxh, Whh, bh, then the extras (layer 0 as
        written, layer l with the suffix l: Wxh1, Whh1, bh1, ...)."""
        suffix = str(layer) if layer else ""
        return tuple(name + suffix for name in ("Wxh", "Whh", "bh") + tuple(e for e, _ in self.extras))

    def layer_shapes(self, layer, vocab_size, hidden_size):
        """[(name, shape)] of layer `layer`'s parameters (layer_names' order)."""
        V, H, G = int(vocab_size), int(hidden_size), self.gates
        shapes = [(V if layer == 0 else H, G * H), (H, G * H), (G * H,)] + [(w * H,) for _, w in self.extras]
        return list(zip(self.layer_names(layer), shapes))

    def state_size(self, hidden_size, num_layers=1):
        """Width S of the carried state (N, S): per layer, one block of H columns per name of `state`."""
        return int(num_layers) * int(hidden_size) * len(self.state)

    @functools.cached_property
    def numba(self):
        """The cell's numba side (`kernels` called once)."""
        return self.kernels()


_REGISTRY = {}


def register(cell):
    """Add `cell` to the registry (the same object again is a no-op); returns it. A name taken by another cell is
    a ValueError (unregister it first)."""
    if not isinstance(cell, Cell):
        raise TypeError(f"register takes a fastrnn.cells.Cell, not {type(cell).__name__}")
    if _REGISTRY.get(cell.name, cell) is not cell:
        raise ValueError(f"a cell named {cell.name!r} is registered already")
    _REGISTRY[cell.name] = cell
    return cell


def unregister(name):
    """Remove the cell `name` from the registry (for tests that register their own)."""
    _REGISTRY.pop(name, None)


def get(cell):
    """The Cell of a name (a Cell is returned as it is). ValueError for a name no cell has."""
    if isinstance(cell, Cell):
        return cell
    try:
        return _REGISTRY[cell]
    except (KeyError, TypeError):
        raise ValueError(f"unknown cell {cell!r}; choose from {', '.join(names())}") from None


def names():
    """The registered cells' names, in the order they were registered."""
    return tuple(_REGISTRY)
