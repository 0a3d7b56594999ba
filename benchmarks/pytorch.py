"""fastrnn against PyTorch on CPU: training chars/s of the same models, side by side in one run.

    python -m benchmarks.pytorch [--configs rnn:1:512:64,lstm:1:512:64,...] [--threads 2] [--repeats 6]
                                 [--bf16/--no-bf16] [--json PATH]

Runs from a checkout (benchmarks/ is not part of the installed package) and needs torch (an optional extra:
`pip install torch`); without it the command says so and exits 1.

Contenders, all float32 unless named, T = 50, V = 65, Adam with elementwise clipping at 5, the same text:

    fastrnn        benchmarks.throughput.BackendStep: the numba kernels' forward_backward + clip + adam
    fastrnn-bf16   the same with --precision bf16 (bf16 recurrent products, float32 sums and weights), where the
                   CPU has AVX512_BF16
    torch          nn.RNN/LSTM/GRU(batch_first=True) + nn.Linear, cross-entropy, backward, clip_grad_value_, Adam,
                   the hidden state carried (detached) from minibatch to minibatch, eager mode
    torch-bf16     the same under torch.autocast("cpu", dtype=torch.bfloat16) (where the CPU has AVX512_BF16 or AMX)

Each contender's repeats are interleaved with the others' (benchmarks.common.time_interleaved) so that a noisy
machine affects them alike; ratios are of medians. The sgemm peak at the same thread count is measured in the same
run, and every row carries its GFLOP/s and fraction of that peak (FLOPs per char as benchmarks.throughput).
"""

import click
import numpy as np

from benchmarks import common, options
from benchmarks.throughput import ADAM, CLIP, V, BackendStep, flops_per_char
from fastrnn import cells

T = 50
CONFIGS = "rnn:1:512:64,lstm:1:512:64,lstm:2:512:64,lstm:2:128:50,gru:1:512:64,rnn:1:128:1"


def torch_cells():
    """The cells PyTorch has a module for (fastrnn.cells: Cell.torch)."""
    return [name for name in cells.names() if cells.get(name).torch]


def parse_configs(text):
    """'lstm:2:512:64' -> [('lstm', 2, 512, 64)] (cell, layers, hidden, batch)."""
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 4 or parts[0] not in torch_cells() or not all(p.isdigit() and int(p) > 0
                                                                        for p in parts[1:]):
            raise click.BadParameter(f"{item!r} is not CELL:LAYERS:HIDDEN:BATCH (e.g. lstm:2:512:64)",
                                     param_hint="--configs")
        out.append((parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
    return out


class TorchStep:
    """One PyTorch training step per call, as a PyTorch user writes it."""

    def __init__(self, torch, cell, layers, H, N, bf16=False, seed=0):
        self.torch, self.bf16 = torch, bf16
        torch.manual_seed(seed)
        rnn = getattr(torch.nn, cells.get(cell).torch[0])  # nn.RNN, nn.LSTM, nn.GRU
        self.rnn = rnn(input_size=V, hidden_size=H, num_layers=layers, batch_first=True)
        self.out = torch.nn.Linear(H, V)
        self.params = list(self.rnn.parameters()) + list(self.out.parameters())
        self.opt = torch.optim.Adam(self.params, lr=ADAM["lr"], betas=(ADAM["beta1"], ADAM["beta2"]), eps=ADAM["eps"])
        self.eye = torch.eye(V)
        self.batches = common.Batches(N, T)
        self.h = None
        self.lstm = len(cells.get(cell).state) == 2  # the state is a tuple (h, c)

    def __call__(self):
        torch = self.torch
        x, y, new_epoch = self.batches.next()
        if new_epoch:
            self.h = None
        x = self.eye[torch.from_numpy(x.astype(np.int64))]  # (N, T, V) one-hot
        y = torch.from_numpy(y.astype(np.int64))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            hs, h = self.rnn(x, self.h)
            logits = self.out(hs)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V).float(), y.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(self.params, CLIP)
        self.opt.step()
        self.h = tuple(t.detach() for t in h) if self.lstm else h.detach()


def cpu_has_bf16():
    flags = set(common.cpu_flags())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


@options.command(help=__doc__.split("\n\n")[0] + "\n\nRuns from a checkout and needs torch (an optional extra).")
@click.option("--configs", default=CONFIGS, help="Models as CELL:LAYERS:HIDDEN:BATCH, comma-separated.")
@options.threads(2)
@options.repeats(6)
@click.option("--min-seconds", type=click.FloatRange(min=0), default=0.5, help="Minimum length of a timed repeat.")
@click.option("--bf16/--no-bf16", default=True, help="Add the bf16 rows (PyTorch's autocast, fastrnn's --precision "
              "bf16) where the CPU has bf16.")
@options.json_output("Write machine, peak, rows and ratios to this JSON file.")
@options.catch_user_errors
def main(configs, threads, repeats, min_seconds, bf16, json_path):
    try:
        import torch
    except ImportError:
        raise click.ClickException("this comparison needs PyTorch: pip install torch (an optional extra)")
    configs = parse_configs(configs)
    import fastrnn.kernels as backend

    threads = common.set_threads(threads)
    torch.set_num_threads(threads)
    machine = common.machine_info()
    peak = common.gemm_gflops("float32")
    use_bf16 = bf16 and cpu_has_bf16()
    from fastrnn.kernels.tiles import has_bf16

    fastrnn_bf16 = use_bf16 and has_bf16()
    rows = []
    for cell, layers, H, N in configs:
        fns = {"fastrnn": BackendStep(backend, H, N, T, "float32", model=cell, layers=layers),
               "torch": TorchStep(torch, cell, layers, H, N)}
        if use_bf16:
            fns["torch-bf16"] = TorchStep(torch, cell, layers, H, N, bf16=True)
            if fastrnn_bf16:
                fns["fastrnn-bf16"] = BackendStep(backend, H, N, T, "float32", model=cell, layers=layers,
                                                  precision="bf16")
        for fn in fns.values():
            fn()  # compile, plan, allocate
        timed = common.time_interleaved(fns, {name: repeats for name in fns}, min_seconds)
        flops = flops_per_char(H, V, cell, layers)
        base = {name: N * T / timed[name][0] for name in fns}
        for name in fns:
            cps = base[name]
            own = "fastrnn-bf16" if name.endswith("bf16") and "fastrnn-bf16" in base else "fastrnn"
            rows.append(dict(contender=name, model=cell, layers=layers, hidden=H, batch=N, seq_len=T,
                             threads=threads, chars_per_sec=cps, gflops=cps * flops / 1e9,
                             peak_fraction=cps * flops / 1e9 / peak, seconds=timed[name][0], repeats=repeats,
                             fastrnn_vs=base["fastrnn"] / cps, fastrnn_same_precision_vs=base[own] / cps))
        print(f"{cell}:{layers} H{H} N{N}: " + ", ".join(f"{n} {base[n]:,.0f} chars/s" for n in fns), flush=True)
    print(common.format_table(rows, COLUMNS))
    print(f"sgemm peak: {peak:.1f} GFLOP/s at {threads} threads; bf16 rows: "
          f"{'yes' if use_bf16 else 'no (' + ('--no-bf16' if not bf16 else 'the CPU has no bf16') + ')'}; "
          f"torch {torch.__version__}")
    if json_path:
        common.write_json(json_path, dict(machine=machine, peaks={"float32": {str(threads): peak}},
                                          torch=torch.__version__, bf16=use_bf16, rows=rows))
        print(f"wrote {json_path}")


COLUMNS = [("contender", "contender", "s"), ("model", "model", "s"), ("L", "layers", "d"), ("H", "hidden", "d"),
           ("N", "batch", "d"), ("thr", "threads", "d"), ("chars/s", "chars_per_sec", ",.0f"),
           ("GFLOP/s", "gflops", ".1f"), ("%peak", "peak_fraction", lambda v: f"{100 * v:.1f}"),
           ("fastrnn x", "fastrnn_vs", ".2f"), ("same-precision fastrnn x", "fastrnn_same_precision_vs", ".2f")]


if __name__ == "__main__":
    main()
