"""Pictures: loss curves, hidden-unit activations and gradient magnitude through time (PNG, matplotlib).

matplotlib is an optional extra (`pip install fastrnn[plot]`); without it these functions raise a clear error.
The numbers behind each picture come from functions here that need no matplotlib (and are tested).
"""

import json
import os

import numpy as np

from fastrnn import reference as ref
from fastrnn.errors import ConfigError, FastrnnError

FIGSIZE = (10, 5)
DPI = 100


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise FastrnnError("plotting needs matplotlib: pip install 'fastrnn[plot]' (or pip install matplotlib)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_log(run_dir):
    """Rows of RUN_DIR/log.jsonl as a list of dicts."""
    path = os.path.join(run_dir, "log.jsonl") if os.path.isdir(run_dir) else run_dir
    if not os.path.exists(path):
        raise ConfigError(f"no training log at {path}")
    rows = []
    with open(path, "rb") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a row cut by a crash, or damaged
            if isinstance(row, dict) and all(isinstance(row.get(k), (int, float)) for k in ("step", "loss")):
                rows.append(row)
    if not rows:
        raise ConfigError(f"the training log {path} is empty")
    return rows


def plot_losses(runs, out):
    """Train (smoothed) and validation loss against steps and against wall time, and chars/s.

    runs: list of (label, run_dir). Writes the PNG `out`."""
    plt = _pyplot()
    fig, (ax_step, ax_time, ax_speed) = plt.subplots(1, 3, figsize=(15, 4.5), dpi=DPI)
    for label, run_dir in runs:
        rows = read_log(run_dir)
        steps = [r["step"] for r in rows]
        wall = [r.get("elapsed", 0.0) / 60 for r in rows]
        loss = [r["loss"] for r in rows]
        line, = ax_step.plot(steps, loss, label=f"{label} train")
        ax_time.plot(wall, loss, color=line.get_color(), label=f"{label} train")
        val = [(r["step"], r.get("elapsed", 0.0) / 60, r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        if val:
            ax_step.plot([v[0] for v in val], [v[2] for v in val], "o--", color=line.get_color(), label=f"{label} val")
            ax_time.plot([v[1] for v in val], [v[2] for v in val], "o--", color=line.get_color(), label=f"{label} val")
        cps = [(r["step"], r["chars_per_sec"] / 1000) for r in rows if r.get("chars_per_sec")]
        if cps:
            ax_speed.plot([c[0] for c in cps], [c[1] for c in cps], color=line.get_color(), label=label)
    ax_step.set(xlabel="step", ylabel="loss (nats/char)", title="Loss by step")
    ax_time.set(xlabel="wall time (minutes)", ylabel="loss (nats/char)", title="Loss by wall time")
    ax_speed.set(xlabel="step", ylabel="thousand chars/s", title="Training speed")
    ax_speed.set_ylim(bottom=0)
    for ax in (ax_step, ax_time, ax_speed):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _float64(P):
    return P.astype(np.float64)


def hidden_activations(P, vocab, text, layer=-1):
    """Hidden states h of one layer (default: the top one) while reading `text`: (len(text), H), row t after
    reading character t."""
    ids = vocab.encode(text).astype(np.int32)
    P64 = _float64(P)
    L = P64.layers
    if not -L <= layer < L:
        raise ConfigError(f"--layer {layer} does not exist: the model has {L} layer(s) (0 to {L - 1})")
    _, (caches, _), _ = ref.model_forward(P64, ids[None], np.zeros((1, P64.cell.state_size(P64.hidden_size, L))))
    return caches[layer][1][0][:, 0, :]  # the layer's seqs start with hs: (T, N, H)


FEATURES = {
    "quote": "inside double quotes",
    "line_position": "position in the line",
    "space": "character is a space",
    "vowel": "character is a vowel",
    "upper": "character is upper case",
}


def feature_values(text, feature):
    """A per-character feature of `text` as floats (see FEATURES)."""
    if feature == "quote":
        inside, out = False, []
        for ch in text:
            if ch == '"':
                inside = not inside
            out.append(float(inside))
        return np.array(out)
    if feature == "line_position":
        pos, out = 0, []
        for ch in text:
            out.append(float(pos))
            pos = 0 if ch == "\n" else pos + 1
        return np.array(out)
    if feature == "space":
        return np.array([float(ch == " ") for ch in text])
    if feature == "vowel":
        return np.array([float(ch.lower() in "aeiou") for ch in text])
    if feature == "upper":
        return np.array([float(ch.isupper()) for ch in text])
    raise ConfigError(f"unknown feature {feature!r}; choose from {', '.join(FEATURES)}")


def correlations(acts, values):
    """Pearson's r of each column of acts (T, H) with values (T,); 0 where either does not vary."""
    a = acts - acts.mean(axis=0)
    v = values - values.mean()
    denom = np.sqrt((a * a).sum(axis=0) * (v * v).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 1e-12, (a * v[:, None]).sum(axis=0) / np.where(denom > 1e-12, denom, 1), 0.0)


def top_correlated_units(acts, values, k=5):
    """Indices and Pearson correlations of the k hidden units most correlated (by |r|) with `values`."""
    r = correlations(acts, values)
    order = np.argsort(-np.abs(r), kind="stable")[:k]
    return order, r[order]


def plot_hidden(P, vocab, text, out, feature="quote", units=64, top=5, layer=-1):
    """Heatmap of hidden activations per character (the first `units` units), and the `top` units most
    correlated with `feature` drawn over the text as in Karpathy's neuron-firing pictures."""
    plt = _pyplot()
    cell, L = P.cell.name, P.layers
    acts = hidden_activations(P, vocab, text, layer)  # (len(text), H)
    where = f"{cell}, layer {layer % L} of {L}" if L > 1 else cell
    values = feature_values(text, feature)
    idx, corr = top_correlated_units(acts, values, top)
    shown = acts[:, : min(units, acts.shape[1])].T  # (units, L)
    labels = [repr(c)[1:-1] or " " for c in text]
    width = max(8, min(40, 0.18 * len(text) + 3))
    fig, (ax_map, ax_top) = plt.subplots(2, 1, figsize=(width, 8), dpi=DPI,
                                         gridspec_kw={"height_ratios": [3, 1.2]})
    im = ax_map.imshow(shown, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax_map.set(ylabel="hidden unit", title=f"Hidden-unit activations h ({where}; first {shown.shape[0]} of "
                                           f"{acts.shape[1]} units) per character")
    ax_map.set_xticks(range(len(text)))
    ax_map.set_xticklabels(labels, fontsize=7, family="monospace")
    fig.colorbar(im, ax=ax_map, label="activation")
    im2 = ax_top.imshow(acts[:, idx].T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax_top.set_yticks(range(len(idx)))
    ax_top.set_yticklabels([f"unit {u} (r={c:+.2f})" for u, c in zip(idx, corr)], fontsize=8)
    ax_top.set_xticks(range(len(text)))
    ax_top.set_xticklabels(labels, fontsize=7, family="monospace")
    ax_top.set(xlabel="character", title=f"Units most correlated with: {FEATURES[feature]}")
    fig.colorbar(im2, ax=ax_top, label="activation")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out, list(zip(idx.tolist(), corr.tolist()))


def gradient_through_time(P, vocab, text):
    """|dL/dh_t| for every position t of `text`, where L is the loss of predicting the LAST character: how much
    the last prediction's gradient reaches back in time (vanishing gradients). h_t is the hidden state after
    reading character t (for a stacked model, the h of every layer together; an lstm's cell state c_t is held
    fixed, so this is the gradient that flows back through h). Returns (len(text)-1,) norms.

    Computed exactly with the reference: for each t, the model is run from its state at t over the rest of the
    text and backpropagated to that state (O(T^2) steps, fine for a sentence).
    """
    ids = vocab.encode(text).astype(np.int32)
    if ids.size < 3:
        raise ConfigError("the text for the gradient plot needs at least 3 characters")
    x, y = ids[None, :-1], ids[None, 1:]
    T = x.shape[1]
    P64 = _float64(P)
    cell, L, H = P64.cell, P64.layers, P64.hidden_size
    states = []  # (1, S) state after reading x[:, :t+1]
    state = np.zeros((1, cell.state_size(H, L)))
    for t in range(T):
        state, _ = ref.step(P64, state, x[:, t])
        states.append(state)
    G = {k: np.zeros_like(v) for k, v in P64.items()}
    norms = np.zeros(T)
    for t in range(T):
        rest = x[:, t + 1:]
        if rest.shape[1] == 0:  # the prediction is made from this very state: only the top layer's h is read
            top_h = ref.split_state(states[t], cell, L, H)[-1][0]
            _, dlogits = ref.softmax_xent(ref.affine_forward(top_h[None], P64["Why"], P64["by"]), y[:, -1:])
            dstate = np.zeros_like(states[t])
            ref.split_state(dstate, cell, L, H)[-1][0][...] = dlogits[0] @ P64["Why"].T
        else:
            logits, fwd, _ = ref.model_forward(P64, rest, states[t])
            _, dlast = ref.softmax_xent(logits[-1:], y[:, -1:])
            dlogits = np.zeros_like(logits)
            dlogits[-1] = dlast[0]
            dstate = ref.model_backward(dlogits, P64, G, rest, states[t], fwd)
        dh = [s[0] for s in ref.split_state(dstate, cell, L, H)]
        norms[t] = np.sqrt(sum(float((d * d).sum()) for d in dh))
    return norms


def plot_gradients(models, text, out):
    """Gradient magnitude through time, log scale; models: list of (label, P, vocab), side by side in one axes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    for label, P, vocab in models:
        norms = gradient_through_time(P, vocab, text)
        back = np.arange(norms.size)[::-1]  # steps back from the predicted character
        ax.semilogy(back, np.maximum(norms, 1e-300), marker=".", label=label)
    shown = text if len(text) <= 60 else "..." + text[-57:]
    ax.set(xlabel="time steps back from the predicted character", ylabel="|dL/dh_t| (log scale)",
           title=f"Gradient magnitude through time\ntext: {shown!r}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
