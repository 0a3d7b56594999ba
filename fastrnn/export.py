"""A trained model out of fastrnn: plain named arrays (npz) or a PyTorch state_dict.

fastrnn keeps hidden states as rows (h: (N, H)), so its matrices are the transposes of PyTorch's:

    fastrnn (layer l)                         PyTorch nn.RNN / nn.LSTM / nn.GRU (batch_first=True)
    Wxh (V or H, G*H)  input side             weight_ih_l{l} (G*H, V or H) = Wxh.T, gate blocks reordered
    Whh (H, G*H)       recurrent side         weight_hh_l{l} (G*H, H)      = Whh.T, gate blocks reordered
    bh  (G*H,)         one bias               bias_ih_l{l} = bh (reordered), bias_hh_l{l} = 0
    Why (H, V), by (V,) output                nn.Linear(H, V): weight (V, H) = Why.T, bias = by

Gate blocks: fastrnn's lstm packs i, f, o, g and PyTorch's i, f, g, o (the last two blocks swap); the gru is
r, z, n in both, and fastrnn's gru is PyTorch's variant (n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), with b_hn = 0
here since fastrnn's bias sits on the input side). The input of layer 0 is the one-hot vector of the character
(PyTorch's input_size = V): Wxh[token] is that vector times Wxh. Each cell declares its PyTorch class and block
order (fastrnn.cells: Cell.torch); a cell PyTorch has no module for exports as npz only.
"""

import json
import os

import numpy as np

from fastrnn.errors import ConfigError

FORMATS = ("npz", "torch")


def named_arrays(P):
    """{'layer0.Wxh': ..., 'layer0.Whh': ..., 'layer0.bh': ..., (the cell's extras), ..., 'Why': ..., 'by': ...} in
    fastrnn's layout."""
    cell = P.cell
    out = {}
    for l in range(P.layers):
        for short, name in zip(cell.layer_names(0), cell.layer_names(l)):
            out[f"layer{l}.{short}"] = np.ascontiguousarray(P[name])
    out["Why"], out["by"] = np.ascontiguousarray(P["Why"]), np.ascontiguousarray(P["by"])
    return out


def _torch_blocks(a, order, H):
    """The gate blocks of a (..., G*H) fastrnn array in PyTorch's order (a copy): block k of the result is
    fastrnn's block order[k] (the cell's export mapping, Cell.torch)."""
    if tuple(order) == tuple(range(len(order))):
        return np.array(a)
    return np.concatenate([a[..., k * H:(k + 1) * H] for k in order], axis=-1)


def torch_arrays(P):
    """(rnn state_dict, linear state_dict) as NumPy arrays with PyTorch's names, shapes and gate order."""
    cell, H = P.cell, P.hidden_size
    if cell.torch is None:
        raise ConfigError(f"PyTorch has no module for the {cell.name} cell: export it with --format npz")
    order = cell.torch[1]
    rnn = {}
    for l in range(P.layers):
        Wxh, Whh, bh = (P[name] for name in cell.layer_names(l)[:3])
        rnn[f"weight_ih_l{l}"] = np.ascontiguousarray(_torch_blocks(Wxh, order, H).T)
        rnn[f"weight_hh_l{l}"] = np.ascontiguousarray(_torch_blocks(Whh, order, H).T)
        rnn[f"bias_ih_l{l}"] = _torch_blocks(bh, order, H)
        rnn[f"bias_hh_l{l}"] = np.zeros(cell.gates * H, dtype=bh.dtype)
    linear = {"weight": np.ascontiguousarray(P["Why"].T), "bias": np.array(P["by"])}
    return rnn, linear


def describe(P, vocab):
    cell = P.cell
    return {"cell": cell.name, "num_layers": P.layers, "hidden_size": P.hidden_size, "vocab_size": vocab.size,
            "level": vocab.level, "symbols": list(vocab.symbols), "torch_class": cell.torch[0] if cell.torch else None}


def export(P, vocab, config, path, fmt):
    """Write the model to `path` as `fmt` ('npz' or 'torch'), atomically (temporary name, then rename)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "torch" and P.cell.torch is None:
        raise ConfigError(f"PyTorch has no module for the {P.cell.name} cell: export it with --format npz")
    path = os.fspath(path)
    meta = describe(P, vocab)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        if fmt == "npz":
            with open(tmp, "wb") as f:
                np.savez(f, **named_arrays(P), vocab=json.dumps(vocab.to_dict()), model=json.dumps(meta),
                         config=json.dumps(config, sort_keys=True))
        else:
            try:
                import torch
            except ImportError:
                raise ConfigError("--format torch needs PyTorch: pip install 'fastrnn[torch]' (or torch)") from None
            rnn, linear = torch_arrays(P)
            torch.save({"rnn": {k: torch.from_numpy(v) for k, v in rnn.items()},
                        "linear": {k: torch.from_numpy(v) for k, v in linear.items()},
                        "model": meta, "config": config}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return meta
