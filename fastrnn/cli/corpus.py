"""`fastrnn prepare` and `fastrnn info`: thin commands over fastrnn.corpus."""

import json
import os
import signal
import sys
import time

import click

from fastrnn import corpus as corpus_lib
from fastrnn.cli.types import Finite
from fastrnn.corpus.output import PrepareInterrupted
from fastrnn.corpus.inputs import text_codec
from fastrnn.errors import ConfigError, CorpusError, os_reason


class _Progress:
    """One self-rewriting stderr line: phase, MB read, MB/s, ETA (only on a terminal, at most 4 times a second)."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.start = time.perf_counter()
        self.last = 0.0

    def __call__(self, phase, done, total):
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.25 and done < total):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9) / 1e6
        left = (2 * total - done if phase == "scan" else total - done) / 1e6 / rate if rate else 0
        click.echo(f"\r{phase:5s} {done / 1e6:9.1f} / {total / 1e6:.1f} MB  {rate:7.1f} MB/s  ETA {left:5.0f}s ",
                   nl=False, err=True)

    def done(self):
        if self.enabled:
            click.echo("", err=True)


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path(allow_dash=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="The corpus file to write (HDF5).")
@click.option("--level", type=click.Choice(corpus_lib.LEVELS), default="char",
              help="Tokens are Unicode characters, or raw bytes.")
@click.option("--val-frac", type=Finite(), default=0.05, help="Fraction of the corpus (from its end) for validation.")
@click.option("--test-frac", type=Finite(), default=0.05, help="Fraction of the corpus (at its very end) for test.")
@click.option("--lowercase", is_flag=True, help="Lowercase the text.")
@click.option("--letters-only", is_flag=True,
              help="Keep letters only: every run of other characters becomes one space.")
@click.option("--encoding", default="utf-8", help="Text encoding of the inputs.")
@click.option("--errors", type=click.Choice(corpus_lib.ERRORS), default="strict",
              help="What to do with bytes that are not valid in --encoding.")
@click.option("--vocab-from", type=click.Path(), default=None,
              help="Use exactly the vocabulary (ids identical) of this corpus, run directory or checkpoint, to "
                   "fine-tune a model on the new text (train --init-from).")
@click.option("--unknown", type=click.Choice(corpus_lib.UNKNOWN), default="error", show_default=True,
              help="With --vocab-from: what to do with symbols outside that vocabulary (error names the first).")
@click.option("--replace-with", default=None, help="With --unknown replace: the symbol of the vocabulary that "
              "stands in for those outside it (escapes as in sample --prime: \\n, \\t, \\uHHHH).")
@click.option("--from-torch-rnn", nargs=2, type=click.Path(), default=None, metavar="NAME.h5 NAME.json",
              help="Convert a corpus made by torch-rnn's scripts/preprocess.py (its splits kept) instead of "
                   "reading text INPUTS.")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@click.option("--quiet", "-q", is_flag=True, help="No progress line.")
@click.pass_context
def prepare(ctx, inputs, output, level, val_frac, test_frac, lowercase, letters_only, encoding, errors, vocab_from,
            unknown, replace_with, from_torch_rnn, force, quiet):
    """Tokenize text files into a corpus file for training.

    INPUTS are text files, directories of text files (read recursively, in name order) or - for standard
    input; they are concatenated in order. The corpus is read twice in bounded chunks, so memory stays flat
    however large it is, and written to a temporary file renamed into place at the end.
    """
    if from_torch_rnn:
        return _from_torch_rnn(ctx, inputs, from_torch_rnn, output, force, quiet)
    if not inputs:
        raise ConfigError("give the text files to prepare (or - for standard input), or --from-torch-rnn NAME.h5 "
                          "NAME.json")
    text_codec(encoding)  # an unknown or non-text encoding: one line before anything is read
    vocab = None
    if vocab_from is not None:
        from fastrnn.runinfo import vocab_of

        vocab = vocab_of(vocab_from)
        if ctx.get_parameter_source("level") == click.core.ParameterSource.DEFAULT:
            level = vocab.level
    elif unknown != "error" or replace_with is not None:
        raise ConfigError("--unknown and --replace-with apply to symbols outside a given vocabulary; use them with "
                          "--vocab-from")
    if replace_with is not None:
        from fastrnn.sample import unescape

        replace_with = unescape(replace_with, "--replace-with")
    out_dir = os.path.dirname(os.path.abspath(output))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CorpusError(f"cannot write {output}: {out_dir} is not a directory")
    progress = _Progress(not quiet and sys.stderr.isatty())
    start = time.perf_counter()
    try:
        info = corpus_lib.prepare(list(inputs), output, level=level, val_frac=val_frac, test_frac=test_frac,
                                  lowercase=lowercase, letters_only=letters_only, encoding=encoding, errors=errors,
                                  force=force, progress=progress, vocab=vocab, vocab_from=vocab_from,
                                  unknown=unknown, replace_with=replace_with)
    except KeyboardInterrupt:  # Ctrl-C: prepare removed its temporary files on the way out
        raise PrepareInterrupted(signal.SIGINT, output) from None
    except OSError as exc:  # reading the inputs has its own errors: this is the output (full, read-only, ...)
        unchanged = "left as it was" if os.path.exists(output) else "not written"
        raise CorpusError(f"cannot write {output}: {os_reason(exc)}; {output} is {unchanged}") from exc
    finally:
        progress.done()
    seconds = time.perf_counter() - start
    mb = sum(s["bytes"] for s in info["sources"]) / 1e6
    click.echo(f"wrote {output}: {info['total_tokens']:,} tokens (train {info['train_tokens']:,}, val "
               f"{info['val_tokens']:,}, test {info['test_tokens']:,}), {info['vocab_size']} symbols, "
               f"{info['dtype']}, {mb:.1f} MB in {seconds:.1f}s")
    opts = info["options"]
    if vocab_from is not None:
        note = {"skipped": "left out", "replaced": f"replaced by {replace_with!r}"}
        changed = [f"{opts[k]:,} symbols outside it {v}" for k, v in note.items() if opts.get(k)]
        click.echo(f"vocabulary of {vocab_from}" + (f"; {', '.join(changed)}" if changed else ""))


def _from_torch_rnn(ctx, inputs, paths, output, force, quiet):
    """prepare --from-torch-rnn: the conversion, with its own progress line and summary."""
    from fastrnn.corpus.torchrnn import import_torch_rnn

    if inputs:
        raise ConfigError("--from-torch-rnn converts a torch-rnn corpus; give no text INPUTS with it")
    given = [name for name in ("level", "val_frac", "test_frac", "lowercase", "letters_only", "encoding", "errors",
                               "vocab_from", "unknown", "replace_with")
             if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
    if given:
        raise ConfigError(f"--{given[0].replace('_', '-')} has no effect with --from-torch-rnn (the torch-rnn file "
                          f"has its splits and tokens already)")
    progress = _Progress(not quiet and sys.stderr.isatty())
    start = time.perf_counter()
    try:
        info = import_torch_rnn(paths[0], paths[1], output, force=force,
                                progress=progress)
    except KeyboardInterrupt:
        raise PrepareInterrupted(signal.SIGINT, output) from None
    except OSError as exc:
        unchanged = "left as it was" if os.path.exists(output) else "not written"
        raise CorpusError(f"cannot write {output}: {os_reason(exc)}; {output} is {unchanged}") from exc
    finally:
        progress.done()
    click.echo(f"wrote {output}: {info['total_tokens']:,} tokens (train {info['train_tokens']:,}, val "
               f"{info['val_tokens']:,}, test {info['test_tokens']:,}), {info['vocab_size']} symbols "
               f"({info['level']} level), {info['dtype']}, from torch-rnn's {paths[0]} in "
               f"{time.perf_counter() - start:.1f}s")


@click.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--verify", is_flag=True,
              help="Also read every token: checksums (format 2) and ids inside the vocabulary; exit 1 if damaged.")
def info(path, as_json, verify):
    """Describe a corpus file (vocabulary, split sizes, dtype, sources and options), or a run directory or checkpoint
    (model, step and epoch, best val loss and its step, the run's files)."""
    from fastrnn import runinfo

    if runinfo.is_run(path):
        if verify:
            raise ConfigError("--verify checks a corpus; a checkpoint is verified whenever it is loaded")
        d = runinfo.describe(path)
        if as_json:
            click.echo(runinfo.to_json(d))
        else:
            runinfo.show(d, click.echo)
        return
    with corpus_lib.open_corpus(path) as c:
        d = c.info()
        if verify:
            chunks = c.verify()
            d["verified"] = ("checksums and ids" if d["checksums"] else "ids only (format 1 has no checksums)") + \
                f", {sum(chunks.values())} chunks"
    if as_json:
        click.echo(json.dumps(d, ensure_ascii=False))
        return
    click.echo(f"corpus          {d['path']}")
    click.echo(f"format version  {d['format_version']}")
    click.echo(f"level           {d['level']}")
    click.echo(f"vocabulary      {d['vocab_size']} symbols, token dtype {d['dtype']}")
    click.echo(f"symbols         {_printable(d['symbols'])}")
    total = d["total_tokens"]
    for name in corpus_lib.SPLITS:
        n = d[f"{name}_tokens"]
        click.echo(f"{name:15s} {n:,} tokens ({100 * n / total:.1f}%)")
    click.echo("options         " + ", ".join(f"{k}={v}" for k, v in d["options"].items()))
    for s in d["sources"]:
        click.echo(f"source          {s['path']} ({s['bytes']:,} bytes)")
    if d["created"]:
        click.echo(f"created         {d['created']}")
    if verify:
        click.echo(f"verified        ok: {d['verified']}")


def _printable(symbols):
    """Symbols on one line: space as ␣, control characters escaped (\\n, \\t, \\x00)."""
    return "".join("\u2423" if c == " " else c if c.isprintable() else ascii(c)[1:-1] for c in symbols)


COMMANDS = [prepare, info]
