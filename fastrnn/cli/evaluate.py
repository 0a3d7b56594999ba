"""`fastrnn eval`: score held-out text with a trained model."""

import json
import os

import click

from fastrnn.errors import CheckpointError, ConfigError, CorpusError

BACKENDS = ["numba", "numpy"]


def _is_corpus(path):
    import h5py

    try:
        return os.path.isfile(path) and h5py.is_hdf5(path)
    except OSError:
        return False


@click.command("eval")
@click.argument("model_path", metavar="RUN|CHECKPOINT", type=click.Path())
@click.argument("sources", metavar="FILE... | CORPUS.h5", nargs=-1, required=True, type=click.Path())
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test",
              help="The split of CORPUS.h5 to score.")
@click.option("--unknown", type=click.Choice(["error", "skip"]), default="error",
              help="Characters of FILE outside the model's vocabulary: an error, or left out (and counted).")
@click.option("--encoding", default="utf-8", help="Text encoding of FILE (character-level models).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--backend", type=click.Choice(BACKENDS), default="numba")
def evaluate(model_path, sources, split, unknown, encoding, as_json, backend):
    """Score text with a trained model: mean nats/char, bits/char and perplexity.

    The text is a split of a prepared corpus (CORPUS.h5 with the model's vocabulary; --split, default test) or
    text files (several are one stream, in order). Every character after the first is predicted from all before
    it, the hidden state carried through the whole text, which is read in pieces (constant memory, any size).
    """
    import numpy as np

    from fastrnn import evaluate as ev
    from fastrnn.api import load_model
    from fastrnn.corpus import open_corpus
    from fastrnn.model import get_backend

    model, vocab, ckpt = load_model(model_path)
    if not np.all(np.isfinite(model.flat)):
        raise CheckpointError(f"{ckpt.path} holds non-finite parameters (a diverged run); nothing to score")
    be = get_backend(backend)
    if len(sources) == 1 and _is_corpus(sources[0]):
        path = sources[0]
        with open_corpus(path) as corpus:
            if corpus.vocab != vocab:
                raise CorpusError(f"the vocabulary of {path} ({corpus.vocab.size} symbols) is not the model's "
                                  f"({vocab.size} symbols); score the text files instead")
            result = ev.score(be, model.P, ev.split_blocks(corpus, split), model.dtype)
        source = f"{split} split of {path}"
    else:
        for path in sources:
            if _is_corpus(path):
                raise ConfigError(f"{path} is an HDF5 file: give one corpus alone, or text files")
            if not os.path.exists(path):
                raise CorpusError(f"{path} does not exist")
        try:
            import codecs

            codecs.lookup(encoding)
        except LookupError:
            raise ConfigError(f"unknown --encoding {encoding!r}") from None
        result = ev.score(be, model.P, ev.file_blocks(vocab, sources, encoding, unknown), model.dtype)
        source = ", ".join(sources)
    result = dict(result, source=source, checkpoint=os.path.abspath(ckpt.path))
    if as_json:
        click.echo(json.dumps(result))
        return
    ppl = result["perplexity"]
    click.echo(f"{result['loss']:.4f} nats/char, {result['bpc']:.4f} bits/char, perplexity "
               f"{ppl:.3f} over {result['chars']:,} characters ({source})"
               + (f"; {result['skipped']:,} characters outside the vocabulary skipped" if result["skipped"] else ""))


COMMANDS = [evaluate]
