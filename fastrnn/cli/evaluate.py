"""`fastrnn eval`: score held-out text with a trained model; `fastrnn serve`: generate over HTTP."""

import json
import os

import click

from fastrnn.cli.types import Finite
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
        from fastrnn.corpus.inputs import text_codec

        text_codec(encoding)  # as prepare checks it: a known codec that decodes bytes to text
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


@click.command("serve")
@click.argument("model_path", metavar="RUN|CHECKPOINT", type=click.Path())
@click.option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, help="Port (0: any free port).")
@click.option("--max-length", type=click.IntRange(min=1), default=10_000,
              help="Longest sample (and prime) a request may ask for, in characters.")
@click.option("--max-body", type=click.IntRange(min=64), default=65_536, help="Largest request body, in bytes.")
@click.option("--max-batch", type=click.IntRange(min=1), default=32,
              help="Requests generated together, reading the weights once per character for all of them.")
@click.option("--max-pending", type=click.IntRange(min=0), default=4,
              help="Requests that may wait for the next batch; more get 503.")
@click.option("--timeout", type=Finite(0.1, 3600), default=30.0,
              help="Seconds a client has to send a request (a kept-alive connection to start its next one), and "
                   "that a response write may make no progress, before the connection is closed.")
@click.option("--max-connections", type=click.IntRange(min=1), default=64,
              help="Connections open at once (one thread each); past it a new one replaces the longest idle one, "
                   "or gets 503.")
@click.option("--backend", type=click.Choice(BACKENDS), default="numba")
def serve(model_path, host, port, max_length, max_body, max_batch, max_pending, timeout, max_connections, backend):
    """Load a model once and answer generation requests over HTTP, with a page at / to watch samples as they are
    generated and the hidden units over text. POST /generate with JSON {prime, length, temperature, top_k, top_p,
    seed, stream} returns {text, seed, length}, or the text streamed as it is generated with "stream": true;
    POST /activations and /ranking give hidden units over a text; GET /model and /health describe the model.
    Requests that come together are generated together, whatever their sampling options (each as it would be
    alone, given its seed). Ctrl-C or SIGTERM stops the server (exit status 130 or 143)."""
    import ipaddress
    import sys

    from fastrnn import httpd
    from fastrnn import serve as srv

    generator = srv.Generator(model_path, backend, max_length, max_body, max_pending, max_batch)
    next(generator.pieces(dict(prime="", length=1, temperature=1.0, top_k=0, top_p=1.0, seed=0)), None)  # compile
    limit = httpd.connection_limit(max_connections)
    try:
        server = srv.make_server(generator, host, port, timeout, limit)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        h, p = server.server_address[:2]
        try:
            local = ipaddress.ip_address(h).is_loopback
        except ValueError:
            local = False
        if not local:
            click.echo(f"fastrnn: warning: listening on {h}, not only this machine: anyone who can reach port {p} "
                       f"can use the server (it has no authentication)", err=True)
        if limit < max_connections:
            click.echo(f"fastrnn: warning: --max-connections {max_connections} is over what the open-file limit "
                       f"allows; {limit} it is (raise it with ulimit -n)", err=True)
        click.echo(f"serving {generator.path} on http://{h}:{p}/ (the page; POST /generate, GET /health); "
                   f"Ctrl-C stops", err=True)
        sys.stderr.flush()
        server.serve_forever()  # until SIGINT or SIGTERM: the group says so in one line, and exits 130 or 143
    finally:
        server.server_close()


COMMANDS = [evaluate, serve]
