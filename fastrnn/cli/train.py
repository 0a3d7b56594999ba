"""`fastrnn train` and `fastrnn sample`: thin commands over fastrnn.train and fastrnn.sample."""

import os
import signal
import sys

import click

from fastrnn.checkpoint import CHECKPOINT_NAME
from fastrnn.guards import EXIT_SIGNAL, no_news
from fastrnn.cli.options import allow_change_help, sampling_option, train_options
from fastrnn.config import BACKENDS, OPTIONS, TrainConfig
from fastrnn.errors import ConfigError
from fastrnn.options import check_optimizer_options, check_sampling
from fastrnn.progress import Printer


CONFIG_FIELDS = {f for f in TrainConfig.__dataclass_fields__}


@click.command()
@click.argument("corpus", type=click.Path())
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(file_okay=False),
              help="Run directory: checkpoint.h5 and log.jsonl go here.")
@train_options
@click.option("--resume", is_flag=True, help="Continue the run in --output exactly where it stopped.")
@click.option("--init-from", type=click.Path(), default=None,
              help="Start a new run from the parameters of this checkpoint (a run directory: its checkpoint.h5; "
                   "name RUN/best.h5 for the best): its architecture and precision, a fresh optimizer and step "
                   "count. CORPUS must have its vocabulary (prepare --vocab-from).")
@click.option("--allow-change", is_flag=True, help=allow_change_help())
@click.option("--force", is_flag=True, help="Start a new run even if --output holds one (its files are removed "
              "first).")
@click.option("--quiet", "-q", is_flag=True, help="Print only the final summary.")
@click.pass_context
def train(ctx, corpus, run_dir, resume, init_from, allow_change, force, quiet, **options):
    """Train a character-level RNN on CORPUS: a corpus made by `fastrnn prepare`, or text (a file or a directory
    of them), prepared on first use with prepare's defaults into fastrnn's cache and reused while it is unchanged.

    Progress goes to stderr and RUN_DIR/log.jsonl; checkpoints to RUN_DIR/checkpoint.h5. Ctrl-C or SIGTERM
    finishes the current step, writes a checkpoint and exits with status 130 (143 for SIGTERM); resume with
    the same command plus --resume. Options that define the model, the data or the numerics cannot change on
    resume; --max-steps/--max-epochs/--max-time, --threads and the monitoring options can.
    """
    from fastrnn.train import train as run_training

    overrides = {name: value for name, value in options.items()
                 if name in CONFIG_FIELDS and value is not None
                 and ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}
    if not resume:  # options that would do nothing with this optimizer are refused, not silently ignored
        check_optimizer_options(overrides.get("optimizer", TrainConfig.optimizer), overrides, OPTIONS)
        if overrides.get("shuffle") and overrides.get("reset_hidden") is False:
            raise ConfigError("--shuffle draws windows that carry no state; it cannot be used with --carry-hidden")
    from fastrnn import distributed

    comm = distributed.world()  # SINGLE (mpi4py not imported) unless an MPI launcher started several processes
    corpus = _corpus_of(corpus, init_from, say=None if quiet or not comm.is_root else _say)
    if comm.size > 1:
        _train_rank(comm, quiet, run_dir, lambda on_event: run_training(
            corpus, run_dir, overrides, resume=resume, allow_change=allow_change, force=force, on_event=on_event,
            init_from=init_from, comm=comm))
        return
    try:
        with Printer(quiet) as printer:  # an error or an interrupt is told on a line of its own
            summary = run_training(corpus, run_dir, overrides, resume=resume, allow_change=allow_change,
                                   force=force, on_event=printer, init_from=init_from)
        if summary["signal"] is not None:
            _stopped_by_signal(summary)
    except KeyboardInterrupt as exc:  # a second signal: stopped at once, by SIGINT (130) or SIGTERM (143)
        sys.unraisablehook = no_news  # a finalizer of what the signal cut short may fail: no news
        if os.path.exists(os.path.join(run_dir, CHECKPOINT_NAME)):
            click.echo("\nfastrnn: interrupted; the last checkpoint written is intact. Resume with the same "
                       "command and --resume.", err=True)
        else:
            click.echo("\nfastrnn: interrupted before the first checkpoint; nothing to resume.", err=True)
        sys.exit(EXIT_SIGNAL.get(getattr(exc, "signum", signal.SIGINT), 130))


def _say(line):
    click.echo(line, err=True)


def _corpus_of(path, init_from, say):
    """The corpus file to train on: `path` itself, or the corpus prepared from the text at `path`
    (fastrnn.corpus.fromtext; with --init-from, tokenized with that checkpoint's vocabulary)."""
    from fastrnn.corpus import fromtext

    if not fromtext.is_text_input(path):
        return path
    return fromtext.cached_corpus([path], say=say, vocab_from=init_from)


def _stopped_by_signal(summary, say=True):
    """The run stopped at a step for a signal and wrote its checkpoint: one line, and 128 + the signal's number.
    A second signal from here on changes nothing (until now it interrupts: the caller says so)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    if say:
        click.echo(f"fastrnn: stopped by signal at step {summary['step']}; checkpoint written to "
                   f"{summary['checkpoint']}. Resume with the same command and --resume.", err=True)
    sys.exit(EXIT_SIGNAL.get(summary["signal"], 130))


def _train_rank(comm, quiet, run_dir, run):
    """One rank of `mpiexec -n K fastrnn train`. Rank 0 prints. An error every rank raised at the same step (a
    decision the ranks shared: fastrnn.distributed) ends each rank with its status and rank 0's line; any other
    error, on any rank, is printed by that rank and aborts the job, since the others would wait for it forever."""
    import contextlib
    import traceback

    from fastrnn.distributed import DistributedError
    from fastrnn.errors import DivergenceError, FastrnnError

    try:
        with Printer(quiet) if comm.is_root else contextlib.nullcontext() as printer:
            summary = run(printer)
        if summary["signal"] is not None:
            _stopped_by_signal(summary, say=comm.is_root)
    except (DistributedError, DivergenceError) as exc:  # shared: every rank stops here
        if comm.is_root and not getattr(exc, "silent", False):
            click.echo(f"fastrnn: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except FastrnnError as exc:  # this rank's alone (a file rank 0 could not write, ...)
        click.echo(f"fastrnn: error: {exc}" + ("" if comm.is_root else f" (MPI rank {comm.rank})"), err=True)
        sys.stderr.flush()
        comm.abort(exc.exit_code)
    except KeyboardInterrupt as exc:  # a second signal: this rank stops at once, and the launcher ends the others
        if comm.is_root:
            click.echo("\nfastrnn: interrupted; the last checkpoint written is intact. Resume with the same "
                       "command and --resume.", err=True)
        sys.stderr.flush()
        os._exit(EXIT_SIGNAL.get(getattr(exc, "signum", signal.SIGINT), 130))
    except Exception:  # a bug: its traceback, and no rank left waiting
        traceback.print_exc()
        sys.stderr.flush()
        comm.abort(1)


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--prime", default="", help="Text to warm the hidden state with; printed before the sample. "
              "Backslash escapes are processed (\\n, \\t, \\\\, \\xHH, \\uHHHH).")
@click.option("--prime-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Read the prime from this UTF-8 file (as it is: no escapes); instead of --prime.")
@sampling_option("length", default=500)
@sampling_option("temperature")
@sampling_option("top_k")
@sampling_option("top_p")
@sampling_option("greedy")
@sampling_option("beam_width")
@sampling_option("num_samples")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="Stream each sample into its own file DIR/sample-I.txt (I from 1) as it is generated, instead "
                   "of printing it; DIR is made if missing, and existing sample files are never overwritten.")
@click.option("--stop-at", default="", help="Stop a sample once it has produced this text (escapes as --prime: "
              "\\n\\n is a blank line).")
@click.option("--top-n-probs", type=click.IntRange(min=0), default=0,
              help="Print the N most probable next characters after the prime, with their probabilities (at "
                   "--temperature), instead of sampling.")
@sampling_option("seed")
@click.option("--backend", type=click.Choice(BACKENDS), default="numba")
def sample(checkpoint, prime, prime_file, length, temperature, top_k, top_p, greedy, beam_width, num_samples,
           output_dir, stop_at, top_n_probs, seed, backend):
    """Generate text from a trained model (a checkpoint file or a run directory), streamed to stdout."""
    from fastrnn.api import load_model
    from fastrnn.model import get_backend
    from fastrnn import sample as gen

    check_sampling(dict(length=length, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                        beam_width=beam_width, num_samples=num_samples, seed=seed))
    if prime_file is not None:
        if prime:
            raise ConfigError("give --prime or --prime-file, not both")
        try:
            with open(prime_file, encoding="utf-8", newline="") as f:
                prime = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read --prime-file {prime_file}: {getattr(exc, 'strerror', None) or exc}") \
                from None
    else:
        prime = gen.unescape(prime, "--prime")
    stop_at = gen.unescape(stop_at, "--stop-at")
    for name, text in (("--prime", prime), ("--stop-at", stop_at)):
        bad = next((i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff"), None)
        if bad is not None:
            raise ConfigError(f"{name} is not valid UTF-8 text (undecodable byte at character {bad})")
    if output_dir is not None and (beam_width or top_n_probs):
        raise ConfigError("--output-dir streams sampled text; it does not go with --beam-width or --top-n-probs")
    model, vocab, ckpt = load_model(checkpoint)
    vocab.encode(prime)  # unknown prime characters: a clear error before any output
    be = get_backend(backend)
    out = sys.stdout
    warmup = ckpt.state.warmup  # an unprimed sample starts from a state warmed on real text
    if top_n_probs:
        for symbol, p in gen.next_probs(be, model.P, vocab, prime, top_n_probs, temperature, model.dtype, warmup):
            out.write(f"{p:.6f}  {symbol!r}\n")
        return
    if beam_width:
        if num_samples > 1:
            raise ConfigError("--num-samples with --beam-width would print the same beam several times; "
                              "beam search gives one result")
        ids, _ = gen.beam_search(be, model.P, vocab, prime=prime, length=length, beam_width=beam_width,
                                 dtype=model.dtype, warmup=warmup)
        text = gen.TextStream(vocab, stop_at)
        out.write(prime + text.feed(ids) + text.finish() + "\n")
        return
    draw = dict(count=num_samples, prime=prime, length=length, temperature=temperature, top_k=top_k, top_p=top_p,
                greedy=greedy, seed=seed, dtype=model.dtype, warmup=warmup)
    if output_dir is not None:
        _samples_to_files(gen, be, model, vocab, output_dir, prime, stop_at, draw)
        return
    # All samples are drawn together (every weight read once per character for all of them); the first is printed
    # as it is generated, the others, held in memory, follow it in order.
    streams = [gen.TextStream(vocab, stop_at) for _ in range(num_samples)]
    held = [[] for _ in range(num_samples)]
    out.write(prime)
    for block in gen.generate_many(be, model.P, vocab, **draw):
        for i, stream in enumerate(streams):
            piece = stream.feed(block[i])
            if i == 0:
                out.write(piece)
                out.flush()
            else:
                held[i].append(piece)
        if all(stream.done for stream in streams):
            break
    out.write(streams[0].finish() + "\n")
    for i in range(1, num_samples):
        out.write("\n" + prime + "".join(held[i]) + streams[i].finish() + "\n")
    out.flush()


def _samples_to_files(gen, be, model, vocab, output_dir, prime, stop_at, draw):
    """--output-dir: sample i (from 1) streamed into DIR/sample-i.txt as its characters come (each file flushed
    after every block), all drawn together. The files are created exclusively: an existing one is an error
    before anything is written."""
    count = draw["count"]
    names = [os.path.join(output_dir, f"sample-{i + 1:0{len(str(count))}d}.txt") for i in range(count)]
    taken = [n for n in names if os.path.lexists(n)]
    if taken:
        raise ConfigError(f"{taken[0]} exists ({len(taken)} of the {count} sample files); choose another "
                          f"--output-dir or remove them")
    try:
        os.makedirs(output_dir, exist_ok=True)
        files = [open(n, "x", encoding="utf-8", newline="") for n in names]
    except OSError as exc:
        raise ConfigError(f"cannot write samples into {output_dir}: {exc.strerror or exc}") from None
    try:
        streams = [gen.TextStream(vocab, stop_at) for _ in range(count)]
        for f in files:
            f.write(prime)
        for block in gen.generate_many(be, model.P, vocab, **draw):
            for f, stream, ids in zip(files, streams, block):
                f.write(stream.feed(ids))
                f.flush()
            if all(stream.done for stream in streams):
                break
        for f, stream in zip(files, streams):
            f.write(stream.finish() + "\n")
    finally:
        for f in files:
            f.close()
    click.echo(f"wrote {count} sample{'s' if count != 1 else ''} to {output_dir}", err=True)


COMMANDS = [train, sample]
