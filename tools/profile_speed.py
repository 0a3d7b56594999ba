"""Break training steps into their phases (data, the backend's own forward/backward phases, clip, update), timed.

    python -m tools.profile_speed --hidden-size 512 --batch-size 64 --threads 2
    python -m tools.profile_speed --corpus corpus.h5 --model lstm --num-layers 2 --steps 50 --json phases.json
    python -m tools.profile_speed -- fastrnn train corpus.h5 --output runs/x --hidden-size 256 --batch-size 32

Runs from a checkout (tools/ is not part of the installed package). The step is timed exactly as training runs
it: the same kernel plan (printed), the same backend call (`profile_step`, which is `forward_backward` with a
clock), dropout masks drawn as training draws them. With a training command after `--`, its options are parsed
by the train command itself and the step is profiled with them on its corpus; nothing is trained or written.
Without a corpus the data is the bundled tiny Shakespeare.

Phases: data (the minibatch from the batch stream); the backend's phases (numba: forward, output and backward
layer by layer, or forward_backward as one call on the fused paths; numpy: forward, loss, backward); clip;
update (the optimizer).
"""

import csv
import os
import statistics
import sys
import time

import click
import numpy as np

from benchmarks import common, options
from fastrnn import cells
from fastrnn.cli.types import Finite
from fastrnn.config import DEFAULT_LR, TrainConfig
from fastrnn.corpus import BatchStream, open_corpus
from fastrnn.dropout import make_masks
from fastrnn.errors import FastrnnError
from fastrnn.model import Model, get_backend
from fastrnn.optim import Optimizer, learning_rate


def profile(config, tokens, vocab_size, steps=20, warmup=3, check=None):
    """Per-phase times of `steps` training steps after `warmup` untimed ones.

    config: TrainConfig; tokens: (M,) training split of a vocabulary of vocab_size symbols; check: its corpus's
    checker, which reads the minibatches as training does (BatchStream).
    Returns {"phases": {name: [seconds per step]}, "plan": its description, "threads", "chars_per_step"}.
    """
    threads = common.set_threads(config.threads or os.cpu_count() or 1)
    backend = get_backend(config.backend)
    model = Model(vocab_size, config.hidden_size, config.dtype, config.model, config.num_layers).init(
        np.random.default_rng(config.seed), config.init_scale, config.init)
    gflat = model.layout.zeros(model.dtype)  # (P,) gradients
    G = model.layout.views(gflat)
    optimizer = Optimizer(config, model.layout, model.dtype, backend)
    stream = BatchStream(tokens, config.batch_size, config.seq_len, check=check)
    plan = backend.plan_for(model.P, config.batch_size, config.seq_len, config.dropout > 0, threads)
    rng = np.random.default_rng(config.seed)
    h = model.zero_state(config.batch_size)  # (N, S)
    times = {}
    for i in range(warmup + steps):
        index = i % stream.steps_per_epoch
        t0 = time.perf_counter()
        x, y = stream.batch(i // stream.steps_per_epoch, index)
        t_data = time.perf_counter() - t0
        if index == 0 or config.reset_hidden:
            h[...] = 0
        masks = make_masks(rng, config.dropout, model.num_layers, config.seq_len, config.batch_size,
                           model.hidden_size, model.dtype)
        _, h, clock = backend.profile_step(model.P, G, x, y, h, masks, plan)
        t1 = time.perf_counter()
        backend.clip_gradients(gflat, config.clip, config.max_grad_norm)
        t2 = time.perf_counter()
        optimizer.update(model.flat, gflat, learning_rate(config, i, stream.steps_per_epoch))
        t3 = time.perf_counter()
        if i >= warmup:
            for name, seconds in [("data", t_data), *clock.items(), ("clip", t2 - t1), ("update", t3 - t2)]:
                times.setdefault(name, []).append(seconds)
    return {"phases": times, "plan": plan.describe(), "threads": threads,
            "chars_per_step": config.batch_size * config.seq_len}


def summarize(result):
    """Rows {phase, median_ms, mean_ms, percent} and a 'step' row; percent of the sum of the phase medians."""
    medians = {name: statistics.median(ts) for name, ts in result["phases"].items()}
    total = sum(medians.values())
    rows = [dict(phase=name, median_ms=medians[name] * 1e3, mean_ms=statistics.fmean(ts) * 1e3,
                 percent=100 * medians[name] / total) for name, ts in result["phases"].items()]
    steps = [sum(parts) for parts in zip(*result["phases"].values())]
    step = statistics.median(steps)
    rows.append(dict(phase="step", median_ms=step * 1e3, mean_ms=statistics.fmean(steps) * 1e3, percent=100.0,
                     chars_per_sec=result["chars_per_step"] / step))
    return rows


def parse_train_command(tokens):
    """TrainConfig fields and the corpus path of a `fastrnn train CORPUS ...` command line (the tokens after --),
    parsed by the train command's own click options."""
    from fastrnn.cli.train import train as train_command

    if "train" not in tokens:
        raise click.UsageError("the command after -- must be a `fastrnn train CORPUS ...` command")
    args = tokens[tokens.index("train") + 1:]
    ctx = train_command.make_context("train", list(args), resilient_parsing=True)
    params = dict(ctx.params)
    corpus = params.pop("corpus")
    fields = {k: v for k, v in params.items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    return corpus, fields


@options.command()
@click.option("--model", type=click.Choice(cells.names()), default="rnn", help="Cell.")
@click.option("--num-layers", type=click.IntRange(min=1), default=1, help="Stacked layers L.")
@click.option("--hidden-size", "--hidden", type=click.IntRange(min=1), default=512, help="Hidden size H.")
@click.option("--batch-size", "--batch", type=click.IntRange(min=1), default=64, help="Sequences per minibatch N.")
@click.option("--seq-len", type=click.IntRange(min=1), default=50, help="Time steps per minibatch T.")
@click.option("--dropout", type=Finite(0, 1, max_open=True), default=0.0, help="Dropout (masks drawn).")
@options.dtype("float32")
@click.option("--threads", type=click.IntRange(min=0), default=2, help="Threads (0: all cores).")
@click.option("--backend", type=click.Choice(["numba", "numpy"]), default="numba", help="Backend.")
@click.option("--optimizer", type=click.Choice(["sgd", "adagrad", "rmsprop", "adam"]), default="adam",
              help="Optimizer (its default learning rate).")
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False),
              help="A prepared CORPUS.h5 (its train split)  [default: the bundled tiny Shakespeare]")
@click.option("--steps", type=click.IntRange(min=1), default=20, help="Timed steps.")
@click.option("--warmup", type=click.IntRange(min=0), default=3,
              help="Untimed steps first (JIT compilation, BLAS start-up).")
@options.json_output("Write the configuration, plan and phase table as JSON here.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write the phase table as CSV here.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def main(model, num_layers, hidden_size, batch_size, seq_len, dropout, dtype, threads, backend, optimizer, corpus,
         steps, warmup, json_path, csv_path, command):
    """Time one training step by phase, as training runs it (the kernel plan it uses is printed).

    COMMAND: `-- fastrnn train CORPUS [options]` to profile that command's settings instead of these options.
    """
    if command:
        corpus, fields = parse_train_command(list(command))
    else:
        fields = dict(model=model, num_layers=num_layers, hidden_size=hidden_size, batch_size=batch_size,
                      seq_len=seq_len, dropout=dropout, dtype=dtype, threads=threads, backend=backend,
                      optimizer=optimizer)
    fields.setdefault("lr", DEFAULT_LR[fields.get("optimizer", TrainConfig.optimizer)])
    try:
        config = TrainConfig(**fields).validate()
        if corpus:
            with open_corpus(corpus) as c:
                result = profile(config, c.split("train"), c.vocab.size, steps, warmup, c.checker("train"))
        else:
            result = profile(config, common.text_tokens(), common.VOCAB, steps, warmup)
    except (FastrnnError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    rows = summarize(result)
    click.echo(f"{config.backend} backend, {config.model} x {config.num_layers} H={config.hidden_size} "
               f"N={config.batch_size} T={config.seq_len} {config.dtype}, {result['threads']} threads, "
               f"{config.optimizer}; {corpus or 'tiny Shakespeare'}; median of {steps} steps after {warmup} warm-up")
    click.echo(f"kernels: {result['plan']}")
    click.echo(common.format_table(rows, [("phase", "phase", "s"), ("median ms", "median_ms", ".3f"),
                                          ("mean ms", "mean_ms", ".3f"), ("% of step", "percent", ".1f"),
                                          ("chars/s", "chars_per_sec", ",.0f")]))
    if json_path:
        common.write_json(json_path, dict(config=config.to_dict(), corpus=corpus, steps=steps,
                                          threads=result["threads"], plan=result["plan"], rows=rows))
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["phase", "median_ms", "mean_ms", "percent", "chars_per_sec"])
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
