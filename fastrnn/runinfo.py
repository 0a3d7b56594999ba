"""What a run directory or checkpoint holds: the model, how far training got, its best validation loss, its files."""

import json
import math
import os

from fastrnn import checkpoint as ckpt_io


def is_run(path):
    """True if `path` is a checkpoint file or a directory holding checkpoint.h5 (not a corpus)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, ckpt_io.CHECKPOINT_NAME))
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return "fastrnn_checkpoint" in f.attrs
    except (OSError, ValueError):
        return False


def vocab_of(path):
    """The Vocab of a corpus file, a run directory or a checkpoint (CorpusError / CheckpointError otherwise)."""
    from fastrnn.corpus import Vocab, open_corpus
    from fastrnn.errors import CorpusError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise CorpusError(f"{path} does not exist (give a corpus file, a run directory or a checkpoint)")
    if is_run(path):
        return Vocab.from_dict(ckpt_io.load(path).vocab)
    if os.path.isdir(path):
        raise CorpusError(f"{path} is a directory without {ckpt_io.CHECKPOINT_NAME}: not a run directory")
    with open_corpus(path) as c:
        return c.vocab


def describe(path):
    """A JSON-friendly description of a run directory or checkpoint file (CheckpointError if it has none)."""
    path = os.fspath(path)
    ckpt = ckpt_io.load(path)
    from fastrnn.corpus import Vocab

    config, state, vocab = ckpt.config, ckpt.state, Vocab.from_dict(ckpt.vocab)
    run_dir = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    best = state.best_val
    best = best if isinstance(best, (int, float)) and math.isfinite(best) else None
    out = {
        "checkpoint": os.path.abspath(ckpt.path),
        "model": {"cell": config.get("model"), "num_layers": config.get("num_layers"),
                  "hidden_size": config.get("hidden_size"), "vocab_size": vocab.size,
                  "level": vocab.level, "parameters": int(ckpt.params.size), "dtype": config.get("dtype"),
                  "dropout": config.get("dropout")},
        "training": {"step": state.step, "epoch": state.epoch, "epochs": epochs_trained(config, state),
                     "train_tokens": state.train_tokens, "seconds": state.elapsed,
                     "loss": state.smooth_loss, "best_val": best,
                     "best_step": state.best_step if best is not None else None,
                     "optimizer": config.get("optimizer"), "lr": config.get("lr"),
                     "batch_size": config.get("batch_size"), "seq_len": config.get("seq_len"),
                     "seed": config.get("seed"), "rollbacks": state.rollbacks},
        "files": [],
    }
    for key, value in (("corpus", state.corpus), ("init_from", state.init_from), ("run_id", state.run_id)):
        if value:
            out["training"][key] = value
    extra = config.get("extra") if isinstance(config.get("extra"), dict) else {}
    if isinstance(extra.get("choice"), dict):  # the model chosen for --max-time (fastrnn.choose)
        out["choice"] = extra["choice"]
    if extra.get("lr_horizon"):  # the step a cosine schedule tied to --max-time ends at
        out["training"]["lr_horizon"] = extra["lr_horizon"]
    if os.path.isdir(run_dir):
        for name in sorted(os.listdir(run_dir)):
            full = os.path.join(run_dir, name)
            if os.path.isfile(full):
                out["files"].append({"name": name, "bytes": os.path.getsize(full)})
        log = os.path.join(run_dir, "log.jsonl")
        if os.path.isfile(log):
            with open(log, "rb") as f:
                out["log_rows"] = sum(1 for _ in f)
    return out


def epochs_trained(config, state):
    """Epochs trained, the current one's fraction included (None where the checkpoint does not say; state:
    checkpoint.RunState)."""
    from fastrnn.corpus import BatchStream
    from fastrnn.errors import FastrnnError

    try:  # the minibatches of an epoch, as training counted them (only the split's length matters)
        stream = BatchStream(range(state.train_tokens), config["batch_size"], config["seq_len"],
                             shuffle=config.get("shuffle", False))
        return state.epoch + state.index / stream.steps_per_epoch
    except (KeyError, TypeError, ValueError, FastrnnError):
        return None


def show(d, echo):
    """Print describe()'s dict for a person."""
    m, t = d["model"], d["training"]
    echo(f"checkpoint      {d['checkpoint']}")
    echo(f"model           {m['cell']} x {m['num_layers']}, hidden {m['hidden_size']}, vocabulary {m['vocab_size']} "
         f"({m['level']}), {m['parameters']:,} parameters, {m['dtype']}"
         + (f", dropout {m['dropout']}" if m.get("dropout") else ""))
    from fastrnn.progress import duration, epochs

    done = f"epoch {epochs(t['epochs'])}" if t.get("epochs") is not None else f"epochs completed: {t['epoch']:,}"
    echo(f"trained         step {t['step']:,} ({done}), {duration(t['seconds'] or 0)}; "
         f"{t['optimizer']} lr {t['lr']}, batch {t['batch_size']} x {t['seq_len']}, seed {t['seed']}")
    if t.get("loss") is not None:
        echo(f"train loss      {t['loss']:.4f} (smoothed)")
    if t["best_val"] is not None:
        echo(f"best val loss   {t['best_val']:.4f} nats/char ({t['best_val'] / math.log(2):.4f} bits/char) "
             f"at step {t['best_step']:,}")
    for key, label in (("corpus", "corpus"), ("init_from", "initialised from"), ("run_id", "run id")):
        if key in t:
            echo(f"{label:15s} {t[key]}")
    if t.get("rollbacks"):
        echo(f"rollbacks       {t['rollbacks']}")
    if d.get("choice", {}).get("line"):
        echo(f"chosen          {d['choice']['line'].removeprefix('choice: ')}")
    elif t.get("lr_horizon"):
        echo(f"cosine ends at  step {t['lr_horizon']:,} (predicted for --max-time)")
    for f in d["files"]:
        echo(f"file            {f['name']} ({f['bytes']:,} bytes)")
    if "log_rows" in d:
        echo(f"log rows        {d['log_rows']:,}")


def to_json(d):
    return json.dumps(d, ensure_ascii=False)
