"""A small Python API for notebooks, over the same code paths as the CLI.

    from fastrnn import CharRNN
    model = CharRNN(hidden_size=256)
    model.fit("input.txt", max_steps=2000)        # a text file or directory, a list of them, a prepared .h5,
                                                  # or fit(text="...") for a string of text (a str is a path)
    print(model.generate("ROMEO:", length=300, temperature=0.8, seed=1))
    model.evaluate("Some held-out text.")         # {'loss': nats/char, 'bpc': bits/char, 'chars': n}
    model.save("romeo.h5");  model = CharRNN.load("romeo.h5")
"""

import os
import shutil
import tempfile

import numpy as np

from fastrnn import checkpoint as ckpt_io
from fastrnn.config import TrainConfig
from fastrnn.corpus import Vocab
from fastrnn.errors import CheckpointError, ConfigError, CorpusError
from fastrnn.model import Model, get_backend
from fastrnn.options import check_sampling


def load_model(path):
    """Load a trained model from a checkpoint file or run directory. Returns (Model, Vocab, Checkpoint)."""
    ckpt = ckpt_io.load(path)
    if not np.all(np.isfinite(ckpt.params)):
        raise CheckpointError(f"{ckpt.path} holds non-finite parameters (NaN/inf: the run diverged); use an "
                              f"earlier checkpoint")
    try:
        config = TrainConfig.from_dict(ckpt.config)
        vocab = Vocab.from_dict(ckpt.vocab)
        model = Model(vocab.size, config.hidden_size, config.dtype, config.model, config.num_layers)
        model.load_flat(np.asarray(ckpt.params, dtype=model.dtype))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ckpt.path} does not describe a model this fastrnn can load ({exc})") from exc
    return model, vocab, ckpt


def _check_data(data, text):
    """fit()'s data: paths that exist, or text= a str; exactly one of them (ConfigError, CorpusError)."""
    if (data is None) == (text is None):
        raise ConfigError("fit() takes either data (a path or a list of paths) or text= (a string of text)")
    if text is not None:
        if not isinstance(text, str):
            raise ConfigError(f"fit(text=...) takes a str, not {type(text).__name__}")
        return
    paths = data if isinstance(data, (list, tuple)) else [data]
    if not paths:
        raise ConfigError("fit() got an empty list of paths")
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(f"fit() takes a path, a list of paths or text=, not {type(path).__name__}")
        if not os.path.exists(path):
            shown = os.fspath(path)
            shown = shown if len(shown) <= 60 else "..." + shown[-57:]
            raise CorpusError(f"fit(): {shown!r} is not a file or directory (for literal text, use fit(text=...))")


class CharRNN:
    """A character-level RNN language model: train, generate, evaluate, save and load.

    Keyword arguments are training options (the fields of fastrnn.config.TrainConfig, as the CLI's
    `fastrnn train` options with underscores: hidden_size, seq_len, batch_size, optimizer, lr, backend, ...).
    """

    def __init__(self, **options):
        self.options = dict(options)
        self.model = None  # fastrnn.model.Model once trained or loaded
        self.vocab = None
        self.checkpoint_path = None
        self.history = []  # log rows of the last fit

    # ----------------------------------------------------------------------------------------------- training

    def fit(self, data=None, run_dir=None, resume=False, on_event=None, *, text=None, init_from=None,
            unknown="error", **options):
        """Train on `data`, a path: a prepared corpus (.h5), a text file or directory, or a list of those; or on
        `text=`, a string of literal text (a str given as `data` is always a path, so a mistyped file name is an
        error, never a corpus). Options override the constructor's. Checkpoints and log.jsonl go to run_dir (a
        temporary directory if None). Returns self.

        init_from: fine-tune, starting from this checkpoint or run directory (as `fastrnn train --init-from`);
        text is then tokenized with its vocabulary, symbols outside it an error or, unknown='skip', left out.

        max_time= (seconds, or "5m") with none of model, num_layers and hidden_size given (here or to the
        constructor) chooses the model and its schedule for the budget, as `fastrnn train --max-time` does
        (fastrnn.choose): the options given override their part; on_event receives the line that says it."""
        import functools

        from fastrnn.corpus import prepare
        from fastrnn.train import train

        _check_data(data, text)
        opts = dict(self.options, **options)
        if init_from is not None:
            from fastrnn.runinfo import vocab_of

            vocab = vocab_of(init_from)
            prepare = functools.partial(prepare, vocab=vocab, vocab_from=os.fspath(init_from), unknown=unknown,
                                        level=vocab.level)
        work = tempfile.mkdtemp(prefix="fastrnn-")
        try:
            corpus = self._corpus_path(data, text, work, prepare)
            run_dir = run_dir or os.path.join(work, "run")
            events = []

            def record(kind, payload):
                if kind == "log":
                    events.append(payload)
                if on_event:
                    on_event(kind, payload)

            # (the run sets numba's and BLAS's threads for its session; the caller's process keeps its own)
            summary = train(corpus, run_dir, opts, resume=resume, force=not resume, on_event=record,
                            init_from=init_from)
            self.history = events
            self.model, self.vocab, ckpt = load_model(summary["checkpoint"])
            self._ckpt = ckpt
            self.checkpoint_path = summary["checkpoint"] if not run_dir.startswith(work) else None
            return self
        finally:
            shutil.rmtree(work, ignore_errors=True)

    @staticmethod
    def _corpus_path(data, text, work, prepare):
        out = os.path.join(work, "corpus.h5")
        if text is not None:
            src = os.path.join(work, "text.txt")
            with open(src, "w", encoding="utf-8") as f:
                f.write(text)
            prepare([src], out)
            return out
        if isinstance(data, (list, tuple)):
            prepare([os.fspath(d) for d in data], out)
            return out
        data = os.fspath(data)
        if data.endswith(".h5"):
            return data
        prepare([data], out)
        return out

    # ---------------------------------------------------------------------------------------------- inference

    def _require(self):
        if self.model is None:
            raise ConfigError("the model is not trained yet: call fit() or CharRNN.load() first")

    def _backend(self):
        return get_backend(self.options.get("backend", "numba"))

    def generate(self, prime="", length=200, temperature=1.0, seed=None, top_k=0, top_p=1.0, greedy=False,
                 beam_width=0):
        """Generated text: `prime` followed by `length` characters (the options: fastrnn.options.SAMPLING)."""
        from fastrnn import sample as gen

        self._require()
        check_sampling(dict(length=length, temperature=temperature, seed=seed, top_k=top_k, top_p=top_p,
                            greedy=greedy, beam_width=beam_width))
        be = self._backend()
        if beam_width:
            ids, _ = gen.beam_search(be, self.model.P, self.vocab, prime=prime, length=length,
                                     beam_width=beam_width, dtype=self.model.dtype, warmup=self._warmup())
        else:
            ids = list(gen.generate(be, self.model.P, self.vocab, prime=prime, length=length,
                                    temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                                    rng=np.random.default_rng(seed), dtype=self.model.dtype, warmup=self._warmup()))
        return prime + "".join(gen.decode_stream(self.vocab, ids))

    def _warmup(self):
        """The ids an unprimed sample is warmed on (the checkpoint's start of the val split), or None."""
        ckpt = getattr(self, "_ckpt", None)
        return None if ckpt is None else ckpt.state.warmup

    def next_probs(self, prime="", k=None, temperature=1.0):
        """The probabilities of the character after `prime`: [(character, p), ...], most probable first (the `k`
        first; all if k is None)."""
        from fastrnn import sample as gen

        self._require()
        check_sampling(dict(temperature=temperature))
        return gen.next_probs(self._backend(), self.model.P, self.vocab, prime, k, temperature, self.model.dtype,
                              self._warmup())

    def generate_many(self, count, prime="", length=200, temperature=1.0, seed=None, top_k=0, top_p=1.0,
                      greedy=False):
        """`count` generated texts (each `prime` followed by `length` characters), drawn together: every weight is
        read once per character for all of them. Text i is generate(..., seed=seed + i)."""
        from fastrnn import sample as gen

        self._require()
        streams = [gen.TextStream(self.vocab) for _ in range(count)]
        pieces = [[prime] for _ in range(count)]
        for block in gen.generate_many(self._backend(), self.model.P, self.vocab, count=count, prime=prime,
                                       length=length, temperature=temperature, top_k=top_k, top_p=top_p,
                                       greedy=greedy, seed=seed, dtype=self.model.dtype, warmup=self._warmup()):
            for i, stream in enumerate(streams):
                pieces[i].append(stream.feed(block[i]))
        return ["".join(p) + stream.finish() for p, stream in zip(pieces, streams)]

    def evaluate(self, text=None, *, files=None, corpus=None, split="test", unknown="error", encoding="utf-8"):
        """Loss of the model on a text: {'loss': nats/char, 'bpc': bits/char, 'perplexity', 'chars': predicted
        characters, 'skipped': characters left out}, as `fastrnn eval` computes it.

        The text is one of: `text` (a str), `files` (a path or a list of paths of text files, one stream in order;
        `unknown='skip'` leaves out characters outside the vocabulary instead of raising VocabError), or `corpus`
        (a prepared CORPUS.h5 with the model's vocabulary) and its `split`. Every character after the first is
        predicted from all before it, the hidden state carried through the whole text, read in pieces."""
        from fastrnn import evaluate as ev
        from fastrnn.corpus import open_corpus

        self._require()
        given = [name for name, value in (("text", text), ("files", files), ("corpus", corpus)) if value is not None]
        if len(given) != 1:
            raise ConfigError("evaluate() takes one of text=, files= or corpus=")
        be, P, dtype = self._backend(), self.model.P, self.model.dtype
        if text is not None:
            ids = self.vocab.encode(text)
            if ids.size < 2:
                raise ConfigError("evaluate() needs a text of at least 2 characters")
            return ev.score(be, P, iter([(ids, 0)]), dtype)
        if files is not None:
            paths = [os.fspath(files)] if isinstance(files, (str, os.PathLike)) else [os.fspath(f) for f in files]
            return ev.score(be, P, ev.file_blocks(self.vocab, paths, encoding, unknown), dtype)
        with open_corpus(os.fspath(corpus)) as c:
            if c.vocab != self.vocab:
                raise CorpusError(f"the vocabulary of {corpus} ({c.vocab.size} symbols) is not the model's "
                                  f"({self.vocab.size} symbols)")
            return ev.score(be, P, ev.split_blocks(c, split), dtype)

    # ------------------------------------------------------------------------------------------- persistence

    def save(self, path):
        """Write the model (and, after fit, its full training state) to a checkpoint file."""
        self._require()
        ckpt = self._ckpt
        ckpt.params = self.model.flat
        ckpt_io.save(path, ckpt)

    @classmethod
    def load(cls, path, **options):
        """A CharRNN from a checkpoint file or run directory (written by fit/save or `fastrnn train`)."""
        model, vocab, ckpt = load_model(path)
        self = cls(**dict(ckpt.config, **options))
        self.model, self.vocab, self._ckpt = model, vocab, ckpt
        self.checkpoint_path = ckpt.path
        return self
