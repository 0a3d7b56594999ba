"""Break one training step into its phases (data, forward, backward, clip, update) with times.

    python -m tools.profile_speed --hidden 512 --batch 64 --seq-len 50 --dtype float32 --threads 2 --backend numba
    python -m tools.profile_speed --corpus corpus.h5 --steps 50 --json phases.json --csv phases.csv
    python -m tools.profile_speed -- fastrnn train corpus.h5 --output runs/x --hidden-size 256 --batch-size 32

With a training command after `--`, its model, data and execution options (--hidden-size, --batch-size,
--seq-len, --dtype, --threads, --backend, --optimizer, --clip, ...) are parsed by the train command itself and
the step is profiled with them on its corpus; nothing is trained or written. Without a corpus the data is the
bundled tiny Shakespeare.

Phases: data = batch_stream.batch(epoch, index); forward = RNN, output layer, loss and dlogits; backward = the
output layer's and the RNN's backward; clip = clip_gradients; update = the optimizer. Any --model and
--num-layers work (dropout masks are not drawn: the step is timed without dropout). The numpy backend is timed
layer by layer through fastrnn.reference. The numba backend is timed through its layer kernels if it has them
(checked against its own forward_backward first), else as one `forward_backward` phase.
"""

import argparse
import csv
import os
import statistics
import sys
import time

import numpy as np

from benchmarks import common
from fastrnn import reference as ref
from fastrnn.config import DEFAULT_LR, TrainConfig
from fastrnn.corpus import BatchStream, open_corpus
from fastrnn.model import Model, get_backend
from fastrnn.optim import Optimizer, learning_rate
from fastrnn.params import arch_of


def reference_phases(P, G):
    """(forward, backward) for the numpy backend. forward(x, y, h0) -> (loss, hT); backward() fills G."""
    saved = {}
    if arch_of(P)[:2] != ("rnn", 1):  # any other model: the whole model's forward and backward passes
        def forward(x, y, h0):
            logits, fwd, state = ref.model_forward(P, x, h0)
            loss, dlogits = ref.softmax_xent(logits, y)
            saved.update(x=x, h0=h0, fwd=fwd, dlogits=dlogits)
            return loss, state

        def backward():
            for g in G.values():
                g[...] = 0
            ref.model_backward(saved["dlogits"], P, G, saved["x"], saved["h0"], saved["fwd"])

        return forward, backward

    def forward(x, y, h0):
        hs = ref.rnn_forward(x, h0, P["Wxh"], P["Whh"], P["bh"])  # (T, N, H)
        loss, dlogits = ref.softmax_xent(ref.affine_forward(hs, P["Why"], P["by"]), y)  # (T, N, V)
        saved.update(x=x, h0=h0, hs=hs, dlogits=dlogits)
        return loss, hs[-1].copy()

    def backward():
        for g in G.values():
            g[...] = 0
        dhs = ref.affine_backward(saved["dlogits"], saved["hs"], P["Why"], G["Why"], G["by"])  # (T, N, H)
        ref.rnn_backward(dhs, saved["x"], saved["h0"], saved["hs"], P["Whh"], G["Wxh"], G["Whh"], G["bh"])

    return forward, backward


def numba_phases(P, G):
    """(forward, backward) through fastrnn.kernels' layer kernels, composed as kernels.lm.lm_forward_backward
    composes them (1-layer rnn only). Raises (ImportError, AttributeError, ...) if the kernels are not laid out
    that way or the model is another."""
    if arch_of(P)[:2] != ("rnn", 1):
        raise TypeError("layer-by-layer numba split exists for the 1-layer rnn only")
    from fastrnn.kernels import backend as kb
    from fastrnn.kernels.lm import check_tokens
    from fastrnn.kernels.rnn import rnn_backward, rnn_forward
    from fastrnn.kernels.softmax_xent import affine_backward, softmax_xent

    dtype, (Wxh, Whh, bh, Why, by) = kb._params(P)
    grads = [G[k] for k in ("Wxh", "Whh", "bh", "Why", "by")]
    saved = {}

    def forward(x, y, h0):
        x, y = kb._tokens(x), kb._tokens(y)
        N, T = x.shape
        V, H = Wxh.shape
        ws = kb._workspace(T, N, H, V, dtype)
        ws["hs"][0] = h0
        check_tokens(x, y, V)
        small = kb._small(N, H)
        rnn_forward(ws["hs"], ws["tmp"], x, Wxh, Whh, bh, small)
        h2 = ws["hs"][1:].reshape(T * N, H)  # (T*N, H)
        np.dot(h2, Why, out=ws["logits"])  # (T*N, V)
        loss = softmax_xent(ws["logits"], ws["rowloss"], by, y, dtype.type(1.0 / (T * N)), True)
        saved.update(x=x, ws=ws, h2=h2, small=small)
        return float(loss), ws["hs"][T].copy()

    def backward():
        ws, h2 = saved["ws"], saved["h2"]
        dWxh, dWhh, dbh, dWhy, dby = grads
        affine_backward(dWhy, dby, ws["dz"].reshape(h2.shape), ws["logits"], h2, Why, ws["acc"])
        rnn_backward(dWxh, dWhh, dbh, ws["dz"], ws["tmp"], ws["acc"], saved["x"], ws["hs"], Whh, saved["small"])

    return forward, backward


def split_phases(backend_name, backend, P, G, x, y, h0):
    """(forward, backward) or None when the backend can only be timed as one forward_backward call.

    A split is used only if it reproduces the backend's forward_backward (loss, hT and gradients)."""
    try:
        forward, backward = (reference_phases if backend_name == "numpy" else numba_phases)(P, G)
        loss, hT = forward(x, y, h0)
        backward()
        got = {k: g.copy() for k, g in G.items()}
        want_loss, want_h = backend.forward_backward(P, G, x, y, h0)
    except (ImportError, AttributeError, TypeError, KeyError) as exc:
        print(f"note: no layer-by-layer split for {backend_name} ({exc!r}); timing forward_backward as one phase",
              file=sys.stderr)
        return None
    ok = np.isclose(loss, want_loss, rtol=1e-4) and np.allclose(hT, want_h, rtol=1e-3, atol=1e-5) and all(
        np.allclose(got[k], G[k], rtol=1e-3, atol=1e-6) for k in G)
    if not ok:
        print(f"note: the layer-by-layer split of {backend_name} does not match its forward_backward; timing "
              f"forward_backward as one phase", file=sys.stderr)
        return None
    return forward, backward


def profile(config, tokens, vocab_size, steps=20, warmup=3):
    """Per-phase times of `steps` training steps after `warmup` untimed ones.

    config: TrainConfig (model, batch, optimizer, clip, dtype, backend, threads); tokens: (M,) training split of
    a vocabulary of vocab_size symbols.
    Returns {"phases": {name: [seconds per step]}, "split": bool, "chars_per_step": N*T, ...}.
    """
    threads = common.set_threads(config.threads or os.cpu_count() or 1)
    backend = get_backend(config.backend)
    model = Model(vocab_size, config.hidden_size, config.dtype, config.model, config.num_layers).init(
        np.random.default_rng(config.seed), config.init_scale, config.init)
    gflat = model.layout.zeros(model.dtype)  # (P,) gradients
    G = model.layout.views(gflat)
    optimizer = Optimizer(config, model.layout.size, model.dtype, backend)
    stream = BatchStream(tokens, config.batch_size, config.seq_len)
    h = model.zero_state(config.batch_size)  # (N, S)
    x, y = stream.batch(0, 0)
    split = split_phases(config.backend, backend, model.P, G, x, y, h)
    names = ["data", "forward", "backward"] if split else ["data", "forward_backward"]
    times = {name: [] for name in names + ["clip", "update"]}
    for i in range(warmup + steps):
        index = i % stream.steps_per_epoch
        lap = [time.perf_counter()]
        x, y = stream.batch(i // stream.steps_per_epoch, index)
        lap.append(time.perf_counter())
        if index == 0:
            h[...] = 0
        if split:
            _, h_next = split[0](x, y, h)
            lap.append(time.perf_counter())
            split[1]()
        else:
            _, h_next = backend.forward_backward(model.P, G, x, y, h)
        lap.append(time.perf_counter())
        backend.clip_gradients(gflat, config.clip, config.max_grad_norm)
        lap.append(time.perf_counter())
        optimizer.update(model.flat, gflat, learning_rate(config, i, stream.steps_per_epoch))
        lap.append(time.perf_counter())
        h = h_next
        if i >= warmup:
            for name, a, b in zip(times, lap, lap[1:]):
                times[name].append(b - a)
    return {"phases": times, "split": bool(split), "threads": threads,
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
    """TrainConfig overrides and the corpus path of a `fastrnn train CORPUS ...` command line (tokens after --),
    parsed by the train command's own click options."""
    from fastrnn.cli.train import train as train_command

    if "train" not in tokens:
        raise SystemExit("profile_speed: the command after -- must be a `fastrnn train CORPUS ...` command")
    args = tokens[tokens.index("train") + 1:]
    ctx = train_command.make_context("train", list(args), resilient_parsing=True)
    params = dict(ctx.params)
    corpus = params.pop("corpus")
    fields = {k: v for k, v in params.items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    return corpus, fields


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=512, help="H")
    p.add_argument("--batch", type=int, default=64, help="N")
    p.add_argument("--seq-len", type=int, default=50, help="T")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backend", default="numba", choices=["numba", "numpy"])
    p.add_argument("--optimizer", default="adam", choices=["sgd", "adagrad", "rmsprop", "adam"])
    p.add_argument("--corpus", help="a prepared CORPUS.h5 (its train split); default: bundled tiny Shakespeare")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (JIT compilation, BLAS start)")
    p.add_argument("--json", help="write the phase table as JSON")
    p.add_argument("--csv", help="write the phase table as CSV")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- fastrnn train CORPUS [options]: profile its settings")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command:
        corpus, fields = parse_train_command(command)
    else:
        corpus = args.corpus
        fields = dict(hidden_size=args.hidden, batch_size=args.batch, seq_len=args.seq_len, dtype=args.dtype,
                      threads=args.threads, backend=args.backend, optimizer=args.optimizer)
    fields.setdefault("lr", DEFAULT_LR[fields.get("optimizer", TrainConfig.optimizer)])
    config = TrainConfig(**fields).validate()
    if corpus:
        with open_corpus(corpus) as c:
            result = profile(config, c.split("train"), c.vocab.size, args.steps, args.warmup)
    else:
        result = profile(config, common.text_tokens(), common.VOCAB, args.steps, args.warmup)
    rows = summarize(result)
    print(f"{config.backend} backend, H={config.hidden_size} N={config.batch_size} T={config.seq_len} "
          f"{config.dtype}, {result['threads']} threads, {config.optimizer}; {corpus or 'tiny Shakespeare'}; "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    print(common.format_table(rows, [("phase", "phase", "s"), ("median ms", "median_ms", ".3f"),
                                     ("mean ms", "mean_ms", ".3f"), ("% of step", "percent", ".1f"),
                                     ("chars/s", "chars_per_sec", ",.0f")]))
    if not result["split"]:
        print("(forward and backward are one call in this backend: forward_backward)")
    if args.json:
        common.write_json(args.json, dict(config=config.to_dict(), corpus=corpus, steps=args.steps,
                                          threads=result["threads"], split=result["split"], rows=rows))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["phase", "median_ms", "mean_ms", "percent", "chars_per_sec"])
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    from benchmarks.common import run_cli

    sys.exit(run_cli(main))
