"""--precision bf16 against float32: the validation loss after the same steps, and the training speed.

    python -m benchmarks.bf16_quality [--corpus FILE] [--model lstm:2:512] [--steps 300] [--json PATH]

Runs from a checkout (benchmarks/ is not part of the installed package); `--help` lists every option.

The corpus (default: ../shared/data/gutenberg-novels.txt beside the checkout, else the bundled tiny Shakespeare) is
prepared once. The same model then trains twice in `fastrnn train` subprocesses, float32 and `--precision bf16`,
from the same seed, data order and options, for --steps updates each (after a 2-step warm-up run that fills
numba's cache); the validation loss is measured once, at the end, on the first --eval-tokens val tokens. The
target: bf16's val loss within 0.02 nats/char of float32's. Where the CPU has no AVX512_BF16 the bf16 run trains
in float32 (fastrnn says so) and the row says `granted: no`.
"""

import os
import subprocess
import tempfile
import time

import click

from benchmarks import common, options
from benchmarks.time_to_quality import final_state, parse_models

TARGET_NATS = 0.02


def train(corpus_h5, run_dir, cell, layers, hidden, precision, steps, settings):
    cmd = common.fastrnn_cmd("train", corpus_h5, "-o", run_dir, "--force", "--model", cell, "--num-layers", layers,
                             "--hidden-size", hidden, "--precision", precision, "--max-steps", steps,
                             "--batch-size", settings["batch_size"], "--seq-len", settings["seq_len"],
                             "--threads", settings["threads"], "--eval-every", 0, "--eval-tokens",
                             settings["eval_tokens"], "--checkpoint-every", 0, "--log-every", 50, "--seed",
                             settings["seed"], "--init", "xavier")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise click.ClickException(f"{precision}: fastrnn train failed "
                                   f"({proc.stderr.strip().splitlines()[-1:] or proc.returncode})")
    state = final_state(run_dir)
    chars = int(state.step) * settings["batch_size"] * settings["seq_len"]
    granted = precision == "float32" or "training in float32" not in proc.stderr
    return dict(precision=precision, granted=granted, steps=int(state.step), val_loss=state.best_val,
                chars_per_sec=chars / float(state.elapsed), wall_seconds=time.perf_counter() - t0,
                kernels=next((line.split("kernels: ", 1)[1] for line in proc.stderr.splitlines()
                              if line.startswith("kernels: ")), None))


@options.command(help=__doc__.split("\n\n")[0] + "\n\nRuns from a checkout (benchmarks/ is not part of the "
                 "installed package).")
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Text corpus (default: ../shared/data/gutenberg-novels.txt if present, else tiny Shakespeare).")
@click.option("--model", "model_text", default="lstm:2:512", help="The model as CELL:LAYERS:HIDDEN.")
@click.option("--steps", type=click.IntRange(min=1), default=300, help="Updates of each run.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, help="Streams per minibatch N of both runs.")
@click.option("--seq-len", type=click.IntRange(min=1), default=50, help="Time steps per minibatch T of both runs.")
@click.option("--eval-tokens", type=click.IntRange(min=1), default=200_000, help="Val tokens scored at the end.")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Random seed of both runs.")
@options.threads(2)
@options.json_output("Write machine, settings and the two rows to this JSON file.")
@options.catch_user_errors
def main(corpus, model_text, steps, batch_size, seq_len, eval_tokens, seed, threads, json_path):
    (cell, layers, hidden), = parse_models(model_text)
    corpus = corpus or common.default_corpus()
    settings = dict(batch_size=batch_size, seq_len=seq_len, eval_tokens=eval_tokens, seed=seed, threads=threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fastrnn-bf16-") as tmp:
        corpus_h5 = common.prepare_corpus(corpus, os.path.join(tmp, "corpus.h5"))
        for precision in ("float32", "bf16"):
            run_dir = os.path.join(tmp, f"run-{precision}")
            train(corpus_h5, run_dir, cell, layers, hidden, precision, 2, settings)  # fill numba's cache
            print(f"{cell}:{layers}:{hidden} {precision}: {steps} steps ...", flush=True)
            rows.append(dict(model=cell, layers=layers, hidden=hidden,
                             **train(corpus_h5, run_dir, cell, layers, hidden, precision, steps, settings)))
    f32, bf16 = rows
    diff = bf16["val_loss"] - f32["val_loss"]
    print(common.format_table(rows, [("precision", "precision", "s"), ("granted", "granted", lambda v: "yes" if v
                                                                        else "no"),
                                     ("steps", "steps", ",d"), ("chars/s", "chars_per_sec", ",.0f"),
                                     ("val nats/char", "val_loss", ".4f")]))
    passed = bool(bf16["granted"] and abs(diff) <= TARGET_NATS)
    print(f"{'PASS' if passed else 'FAIL'}  bf16 val loss within {TARGET_NATS} nats/char of float32 after {steps} "
          f"steps: {diff:+.4f}; speed {bf16['chars_per_sec'] / f32['chars_per_sec']:.2f}x")
    if json_path:
        common.write_json(json_path, dict(machine=common.machine_info(), corpus=os.path.basename(corpus),
                                          settings=dict(settings, steps=steps), rows=rows,
                                          target=dict(name=f"bf16 val loss within {TARGET_NATS} of float32",
                                                      value=diff, threshold=TARGET_NATS, passed=passed),
                                          speedup=bf16["chars_per_sec"] / f32["chars_per_sec"]))
        print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
