"""`fastrnn export`: the exported arrays, run through PyTorch's documented equations, give fastrnn's logits."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from fastrnn import reference as ref
from fastrnn.cli import main
from fastrnn.export import named_arrays, torch_arrays
from fastrnn.model import Model


def random_model(cell, layers=2, V=11, H=7):
    """Weights and biases all non-zero and far from uniform (float64)."""
    model = Model(V, H, "float64", cell, layers).init(np.random.default_rng(0), 0.5)
    rng = np.random.default_rng(1)
    for name, view in model.P.items():
        if view.ndim == 1:
            view[...] = rng.standard_normal(view.shape) * 0.5
    return model


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def torch_equations(rnn, linear, cell, layers, tokens, V):
    """Logits (T, V) of PyTorch's nn.RNN/LSTM/GRU + nn.Linear equations (as its documentation states them), on
    one-hot inputs, from a zero state, written in NumPy."""
    H = rnn["weight_hh_l0"].shape[1]
    h = [np.zeros(H) for _ in range(layers)]
    c = [np.zeros(H) for _ in range(layers)]
    out = []
    for token in tokens:
        x = np.zeros(V)
        x[token] = 1.0
        for l in range(layers):
            Wi, Wh = rnn[f"weight_ih_l{l}"], rnn[f"weight_hh_l{l}"]
            bi, bh = rnn[f"bias_ih_l{l}"], rnn[f"bias_hh_l{l}"]
            gi, gh = Wi @ x + bi, Wh @ h[l] + bh
            if cell == "rnn":
                h[l] = np.tanh(gi + gh)
            elif cell == "lstm":
                i, f, g, o = np.split(gi + gh, 4)  # PyTorch's order
                c[l] = sigmoid(f) * c[l] + sigmoid(i) * np.tanh(g)
                h[l] = sigmoid(o) * np.tanh(c[l])
            else:
                ir, iz, inn = np.split(gi, 3)
                hr, hz, hn = np.split(gh, 3)
                r, z = sigmoid(ir + hr), sigmoid(iz + hz)
                n = np.tanh(inn + r * hn)
                h[l] = (1 - z) * n + z * h[l]
            x = h[l]
        out.append(linear["weight"] @ x + linear["bias"])
    return np.array(out)


TOKENS = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_pytorch_equations_on_the_exported_arrays_give_fastrnns_logits(cell):
    model = random_model(cell)
    rnn, linear = torch_arrays(model.P)
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    assert rnn["weight_ih_l0"].shape == (G * 7, 11) and rnn["weight_hh_l1"].shape == (G * 7, 7)
    assert rnn["weight_ih_l1"].shape == (G * 7, 7) and linear["weight"].shape == (11, 7)
    expect, _, _ = ref.model_forward(model.P, np.array([TOKENS], dtype=np.int32), model.zero_state(1))
    got = torch_equations(rnn, linear, cell, 2, TOKENS, 11)
    np.testing.assert_allclose(got, expect[:, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_through_torch_itself(cell, tmp_path):
    torch = pytest.importorskip("torch")
    from fastrnn.corpus import Vocab
    from fastrnn.export import export

    model = random_model(cell)
    path = tmp_path / "m.pt"
    export(model.P, Vocab(range(97, 108)), {"model": cell}, path, "torch")
    saved = torch.load(path)
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    rnn = module(input_size=11, hidden_size=7, num_layers=2, batch_first=True).double()
    rnn.load_state_dict(saved["rnn"])
    out = torch.nn.Linear(7, 11).double()
    out.load_state_dict(saved["linear"])
    x = torch.nn.functional.one_hot(torch.tensor([TOKENS]), 11).double()
    with torch.no_grad():
        logits = out(rnn(x)[0])[0].numpy()
    expect, _, _ = ref.model_forward(model.P, np.array([TOKENS], dtype=np.int32), model.zero_state(1))
    np.testing.assert_allclose(logits, expect[:, 0], rtol=1e-10, atol=1e-10)
    assert saved["model"]["torch_class"] == module.__name__


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(small_corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("export") / "run"
    r = run("train", small_corpus, "-o", d, "--hidden-size", "8", "--seq-len", "10", "--batch-size", "4",
            "--model", "gru", "--num-layers", "2", "--max-steps", "3")
    assert r.exit_code == 0, r.output
    return d


def test_npz_holds_every_parameter_the_vocabulary_and_the_configuration(trained, tmp_path):
    from fastrnn.api import load_model

    out = tmp_path / "m.npz"
    r = subprocess.run([sys.executable, "-m", "fastrnn", "export", str(trained), "--format", "npz", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    model, vocab, ckpt = load_model(trained)
    with np.load(out) as d:
        assert sorted(d.files) == sorted(["layer0.Wxh", "layer0.Whh", "layer0.bh", "layer1.Wxh", "layer1.Whh",
                                          "layer1.bh", "Why", "by", "vocab", "model", "config"])
        for name, value in named_arrays(model.P).items():
            assert (d[name] == value).all() and d[name].dtype == value.dtype
        assert json.loads(str(d["vocab"])) == vocab.to_dict()
        meta = json.loads(str(d["model"]))
        assert (meta["cell"], meta["num_layers"], meta["hidden_size"]) == ("gru", 2, 8)
        assert meta["symbols"] == list(vocab.symbols)
        assert json.loads(str(d["config"]))["hidden_size"] == 8


def one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fastrnn: error:"), err
    for fragment in fragments:
        assert fragment in err, err


def test_bad_exports_are_one_line_and_leave_files_alone(trained, tmp_path):
    existing = tmp_path / "keep.npz"
    existing.write_bytes(b"precious")
    one_line_error(run("export", trained, "-o", existing), "exists", "--force")
    assert existing.read_bytes() == b"precious"
    assert run("export", trained, "-o", existing, "--force").exit_code == 0
    one_line_error(run("export", trained, "-o", tmp_path / "no" / "m.npz"), "does not exist")
    one_line_error(run("export", tmp_path / "missing", "-o", tmp_path / "m.npz"), "not found")
    r = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None\n"
                        "from fastrnn.cli import main; main()", "export", str(trained), "--format", "torch",
                        "-o", str(tmp_path / "m.pt")], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "fastrnn: error: --format torch needs PyTorch: pip install 'fastrnn[torch]' (or torch)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.npz"]


def test_export_force_never_replaces_a_checkpoint_or_a_corpus(trained, tmp_path):
    """--force replaces an earlier export; an output that is the checkpoint being exported (or any HDF5 file: a
    checkpoint of another run, a corpus) is refused and left as it was."""
    import shutil

    ckpt = tmp_path / "copy.h5"
    shutil.copy(os.path.join(trained, "checkpoint.h5") if os.path.isdir(trained) else trained, ckpt)
    before = ckpt.read_bytes()
    one_line_error(run("export", ckpt, "-o", ckpt, "--force"), "HDF5 file", "never replaces")
    assert ckpt.read_bytes() == before
    other = tmp_path / "other.h5"
    shutil.copy(ckpt, other)
    one_line_error(run("export", ckpt, "-o", other, "--force"), "HDF5 file")
    assert other.read_bytes() == before


def test_a_cell_pytorch_lacks_exports_as_npz_only(small_corpus, tmp_path):
    """An lnlstm: its npz holds every parameter (the gains and biases too) and, put back into a model, gives the
    checkpoint's logits; --format torch is a one-line error that writes nothing."""
    from fastrnn.api import load_model
    from fastrnn.params import model_layout

    d = tmp_path / "run"
    r = run("train", small_corpus, "-o", d, "--hidden-size", "8", "--seq-len", "10", "--batch-size", "4",
            "--model", "lnlstm", "--num-layers", "2", "--max-steps", "3", "--dtype", "float64")
    assert r.exit_code == 0, r.output
    out = tmp_path / "m.npz"
    assert run("export", d, "--format", "npz", "-o", out).exit_code == 0
    model, vocab, _ = load_model(d)
    with np.load(out) as f:
        meta = json.loads(str(f["model"]))
        assert (meta["cell"], meta["num_layers"], meta["torch_class"]) == ("lnlstm", 2, None)
        assert {f"layer{l}.{k}" for l in (0, 1) for k in ("gx", "gh", "gc", "bc")} <= set(f.files)
        layout = model_layout(meta["cell"], meta["vocab_size"], meta["hidden_size"], meta["num_layers"])
        flat = layout.zeros(np.float64)
        P = layout.views(flat)
        for l in range(2):
            for short, name in zip(P.cell.layer_names(0), P.cell.layer_names(l)):
                P[name][...] = f[f"layer{l}.{short}"]
        P["Why"][...], P["by"][...] = f["Why"], f["by"]
    np.testing.assert_array_equal(flat, model.flat)
    expect, _, _ = ref.model_forward(model.P, np.array([TOKENS[:5]], dtype=np.int32), model.zero_state(1))
    got, _, _ = ref.model_forward(P, np.array([TOKENS[:5]], dtype=np.int32), model.zero_state(1))
    np.testing.assert_array_equal(got, expect)
    one_line_error(run("export", d, "--format", "torch", "-o", tmp_path / "m.pt"), "PyTorch has no module",
                   "lnlstm", "--format npz")
    assert not (tmp_path / "m.pt").exists()
