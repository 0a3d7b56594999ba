"""Neurons over text, for `fastrnn serve`'s page: the activation of hidden units per character of a text, and the
units that most track simple properties of text (Karpathy, Johnson and Fei-Fei 2015, "Visualizing and
Understanding Recurrent Networks").

    POST /activations  {"text": "...", "layer": -1, "state": "h", "units": null}
                       -> {"tokens": [...], "layer": l, "state": "h", "units": [u, ...],
                           "activations": [[a_u(t) for each token t] for each unit u]}  (3 decimals)
    POST /ranking      {"text": "", "layer": -1, "state": "h", "top": 5}
                       -> {"source": ..., "chars": n, "features": [{"name", "description",
                           "units": [[u, r], ...]}, ...]}

The hidden state starts at zero before the text, as `fastrnn plot-hidden` does. `layer` counts from 0 (negative:
from the top); `state` is "h" (a layer's output) or, for an lstm, "c" (its cell). `units` null means all of them.
A ranking's units are those whose activation correlates most (Pearson's r, by |r|) with a feature; with no text,
it is computed on a stretch of the validation split of the corpus the model was trained on, when that file is
still where the checkpoint says.
"""

import os

import numpy as np

from fastrnn import reference as ref
from fastrnn.errors import FastrnnError
from fastrnn.httpd import BadRequest

MAX_TEXT = 2000  # tokens of a text to read
MAX_VALUES = 600_000  # activations in one answer (units x tokens): a few MB of JSON at most
CORPUS_STRETCH = 4000  # tokens of the corpus's validation split a ranking reads when no text is given
FEATURES = {
    "quote": "inside double quotes",
    "bracket": "inside brackets ( ), [ ] or { }",
    "line_position": "position in the line",
    "line_end": "the line's last character comes next",
    "space": "character is a space",
    "vowel": "character is a vowel",
    "upper": "character is upper case",
}


def feature_values(text, feature):
    """A per-character property of `text` as floats (see FEATURES)."""
    if feature == "bracket":
        depth, out = 0, []
        for ch in text:
            if ch in "([{":
                depth += 1
            out.append(float(depth > 0))
            if ch in ")]}":
                depth = max(0, depth - 1)
        return np.array(out)
    if feature == "line_end":
        return np.array([float(text[i + 1:i + 2] == "\n") for i in range(len(text))])
    from fastrnn.plots import feature_values as common

    return common(text, feature)


def hidden_states(P, text_ids, layer=-1, state="h"):
    """(T, H) float64: layer `layer`'s h (or another vector of its cell's state: an lstm's c) after each token of
    text_ids, from a zero state."""
    P64 = P.astype(np.float64)
    _, (caches, _), _ = ref.model_forward(P64, np.asarray(text_ids, dtype=np.int32)[None],
                                          np.zeros((1, P64.cell.state_size(P64.hidden_size, P64.layers))))
    seqs = caches[layer][1]  # hs, and the cell's other state vectors (Cell.state), at every step
    return seqs[P64.cell.state.index(state)][:, 0, :]


def correlations(acts, values):
    """Pearson's r of each column of acts (T, H) with values (T,); 0 where either does not vary (as plot-hidden
    ranks its units)."""
    from fastrnn.plots import correlations as r

    return r(acts, values)


def rank(acts, text, top=5):
    """For each feature of FEATURES: the `top` units most correlated with it, [[unit, r], ...] (none if the
    feature does not vary over the text)."""
    out = []
    for name, description in FEATURES.items():
        values = feature_values(text, name)
        units = []
        if values.size > 1 and values.min() != values.max():
            r = correlations(acts, values)
            order = np.argsort(-np.abs(r), kind="stable")[:top]
            units = [[int(u), round(float(r[u]), 4)] for u in order]
        out.append({"name": name, "description": description, "units": units})
    return out


class Inspector:
    """A loaded model's units, for the server: requests checked (BadRequest), answers as dicts."""

    def __init__(self, model, vocab, ckpt, max_text=MAX_TEXT, max_values=MAX_VALUES):
        self.model, self.vocab, self.ckpt = model, vocab, ckpt
        self.max_text, self.max_values = int(max_text), int(max_values)
        self.cell, self.layers, self.hidden = model.model, model.num_layers, model.hidden_size
        self.states = model.cell.state  # the vectors a layer carries: ("h",), or ("h", "c") for an lstm
        self.corpus = ckpt.state.corpus or None

    def _common(self, req, fields):
        if not isinstance(req, dict):
            raise BadRequest(400, "the body must be a JSON object")
        unknown = sorted(set(req) - set(fields))
        if unknown:
            raise BadRequest(400, f"unknown field {unknown[0]!r}; the fields are {', '.join(fields)}")
        text = req.get("text", "")
        if not isinstance(text, str):
            raise BadRequest(400, f"text has the wrong type ({type(text).__name__})")
        layer = req.get("layer", -1)
        if isinstance(layer, bool) or not isinstance(layer, int) or not -self.layers <= layer < self.layers:
            raise BadRequest(400, f"layer must be an integer in [{-self.layers}, {self.layers - 1}], got {layer!r}")
        state = req.get("state", "h")
        if state not in self.states:
            raise BadRequest(400, "state must be \"h\"" + (f" or \"c\" (the {self.cell}'s cell)" if "c" in self.states
                                                             else f" (a {self.cell} has no cell state)"))
        if len(text) > self.max_text:
            raise BadRequest(400, f"text is longer than {self.max_text} characters")
        try:
            ids = self.vocab.encode(text)
        except FastrnnError as exc:
            raise BadRequest(400, f"text: {exc}") from None
        if ids.size > self.max_text:
            raise BadRequest(400, f"text is longer than {self.max_text} tokens")
        return ids, layer % self.layers, state

    def tokens(self, ids):
        return [self.vocab.symbols[i] for i in ids]

    def activations(self, req):
        ids, layer, state = self._common(req, ("text", "layer", "state", "units"))
        if ids.size == 0:
            raise BadRequest(400, "text is empty")
        units = req.get("units")
        if units is None:
            units = list(range(self.hidden))
        if not isinstance(units, list) or not all(isinstance(u, int) and not isinstance(u, bool) for u in units):
            raise BadRequest(400, "units must be a list of unit numbers, or null for all of them")
        bad = next((u for u in units if not 0 <= u < self.hidden), None)
        if bad is not None:
            raise BadRequest(400, f"unit {bad} does not exist: units are 0 to {self.hidden - 1}")
        if not units:
            raise BadRequest(400, "units is empty")
        if len(units) * ids.size > self.max_values:
            raise BadRequest(400, f"{len(units)} units x {ids.size} characters is over {self.max_values} "
                                  f"activations; ask for fewer units or a shorter text")
        acts = hidden_states(self.model.P, ids, layer, state)
        return {"tokens": self.tokens(ids), "layer": layer, "state": state, "units": units,
                "activations": np.round(acts[:, units].T, 3).tolist()}

    def ranking(self, req):
        ids, layer, state = self._common(req, ("text", "layer", "state", "top"))
        top = req.get("top", 5)
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 50:
            raise BadRequest(400, f"top must be an integer in [1, 50], got {top!r}")
        if ids.size:
            source = "the text given"
        else:
            ids, source = self._corpus_stretch()
        if ids.size < 2:
            raise BadRequest(400, "a ranking needs at least 2 characters of text")
        text = "".join(self.tokens(ids))
        acts = hidden_states(self.model.P, ids, layer, state)
        return {"source": source, "chars": int(ids.size), "layer": layer, "state": state,
                "features": rank(acts, text, top)}

    def _corpus_stretch(self):
        """The first CORPUS_STRETCH tokens of the validation split (else train) of the model's corpus."""
        from fastrnn.corpus import open_corpus

        if not self.corpus or not os.path.isfile(self.corpus):
            where = f" ({self.corpus} is not there)" if self.corpus else ""
            raise BadRequest(400, f"give a text: the corpus the model was trained on is not known{where}")
        try:
            with open_corpus(self.corpus) as corpus:
                if corpus.vocab != self.vocab:
                    raise BadRequest(400, f"give a text: {self.corpus} no longer has the model's vocabulary")
                split = "val" if corpus.split("val").size >= 2 else "train"
                n = min(CORPUS_STRETCH, self.max_text * 2, corpus.split(split).size)
                ids = corpus.read(split, 0, n).astype(np.int32)
        except (FastrnnError, OSError) as exc:
            raise BadRequest(400, f"give a text: the model's corpus cannot be read ({exc})") from None
        return ids, f"the first {ids.size} characters of the {split} split of {os.path.basename(self.corpus)}"
