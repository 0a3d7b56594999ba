"""The training loop: schedule, evaluation, checkpoints, progress events and signals. No math.

`train()` reports what happens through a callback `on_event(kind, data)` (the CLI prints; the library does not):

    start       the resolved configuration, model and data sizes
    compiled    seconds taken by the first step (includes JIT compilation), excluded from chars/s
    log         a progress row (also appended to RUN_DIR/log.jsonl): step, epoch, loss, chars_per_sec, rss_mb, ...
    eval        a validation loss
    sample      a short generated text
    checkpoint  a checkpoint written
    message     a line for the user
    end         the summary (also returned)
"""

import dataclasses
import json
import math
import os
import signal
import threading
import time

import numpy as np
import psutil

from fastrnn import checkpoint as ckpt_io
from fastrnn.config import DEFAULT_LR, RESUME_CHANGEABLE, RESUME_CHANGEABLE_WITH_ALLOW, TrainConfig
from fastrnn.corpus import BatchStream, Vocab, open_corpus
from fastrnn.dropout import make_masks
from fastrnn.errors import CheckpointError, ConfigError, DivergenceError
from fastrnn.model import Model, get_backend
from fastrnn.params import Layout, model_shapes
from fastrnn.optim import Optimizer, learning_rate
from fastrnn.sample import generate

LOG_NAME = "log.jsonl"
DEFAULT_MAX_EPOCHS = 10.0  # used when no --max-steps/--max-epochs/--max-time is given
RELEASE_EVERY = 1.0  # seconds between releases of the corpus pages read so far (keeps RSS flat on big corpora)
SMOOTHING = 0.99  # train loss shown = exponential moving average, as min-char-rnn's smooth_loss


@dataclasses.dataclass
class RunState:
    """Everything besides parameters and optimizer buffers that a resumed run needs to continue exactly."""

    step: int = 0  # updates done
    epoch: int = 0  # position of the next minibatch: (epoch, index within the epoch)
    index: int = 0
    smooth_loss: float = float("nan")
    first_loss: float = float("nan")
    best_val: float = float("inf")
    best_step: int = -1
    evals_since_best: int = 0
    elapsed: float = 0.0  # seconds of training so far, over all sessions of the run
    rng: dict = dataclasses.field(default_factory=dict)  # numpy bit generator state
    train_tokens: int = 0  # the corpus the run was trained on (checked on resume)
    vocab_size: int = 0
    lr_scale: float = 1.0  # halved by each divergence rollback
    rollbacks: int = 0


RUNSTATE_FIELDS = {f.name for f in dataclasses.fields(RunState)}


class StopFlag:
    """Set by SIGINT/SIGTERM: the loop finishes its step, checkpoints and stops. A second signal interrupts at once."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        return False


def resolve_config(overrides, saved=None, allow_change=False):
    """The configuration of a new run (defaults + overrides) or of a resumed one (saved + permitted overrides).

    overrides: dict of options the user gave explicitly (field name -> value).
    """
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
    if saved is None:
        values = dict(overrides)
        if "lr" not in values:
            values["lr"] = DEFAULT_LR[values.get("optimizer", TrainConfig.optimizer)] \
                if values.get("optimizer", TrainConfig.optimizer) in DEFAULT_LR else TrainConfig.lr
        config = TrainConfig(**values)
        if not (config.max_steps or config.max_epochs or config.max_time):
            config.max_epochs = DEFAULT_MAX_EPOCHS
        return config.validate()
    config = TrainConfig.from_dict(saved)
    for name, value in overrides.items():
        old = getattr(config, name)
        if old == value:
            continue
        flag = "--" + name.replace("_", "-")
        if name in RESUME_CHANGEABLE or (allow_change and name in RESUME_CHANGEABLE_WITH_ALLOW):
            setattr(config, name, value)
        elif name in RESUME_CHANGEABLE_WITH_ALLOW:
            raise ConfigError(f"{flag} {value} differs from the checkpoint ({old}); add --allow-change to change it")
        else:
            raise ConfigError(f"{flag} {value} differs from the checkpoint ({old}); a resumed run keeps the model, "
                              f"data and numerics it started with")
    return config.validate()


def evaluate(backend, model, stream, plan=None):
    """Mean loss in nats/char over the whole split of `stream`, hidden state carried from zero; plan: the
    backend's plan for the stream's shape (None: made by the backend)."""
    h = model.zero_state(stream.batch_size)
    total = 0.0
    for index in range(stream.steps_per_epoch):
        x, y = stream.batch(0, index)
        loss, h = backend.forward_loss(model.P, x, y, h, plan=plan)
        total += loss
    return total / stream.steps_per_epoch


def _eval_stream(tokens, config):
    """A batch stream over the val split (its first --eval-tokens tokens if set): the training batch size, or
    fewer streams if the split is small."""
    if config.eval_tokens:
        tokens = tokens[: config.eval_tokens]
    n = min(config.batch_size, (len(tokens) - 1) // config.seq_len)
    if n <= 0:
        return None
    return BatchStream(tokens, n, config.seq_len, name="val")


def _truncate_log(path, step):
    """Drop log rows past `step` (written after the checkpoint a resumed run starts from)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip()]
    keep = []
    for line in rows:
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:
            pass  # a row cut by a crash
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)


def _set_threads(n):
    from fastrnn.kernels.threads import set_threads

    return set_threads(n or os.cpu_count() or 1)


def train(corpus_path, run_dir, overrides=None, *, resume=False, allow_change=False, force=False, on_event=None):
    """Train a model on CORPUS.h5 into `run_dir`. Returns a summary dict (also sent as the 'end' event).

    resume: continue from run_dir/checkpoint.h5 exactly where it stopped.
    force: start a new run even if run_dir holds one (its checkpoint is replaced at the first save).
    """
    emit = on_event or (lambda kind, data: None)
    overrides = dict(overrides or {})
    run_dir = os.fspath(run_dir)
    ckpt_path = os.path.join(run_dir, ckpt_io.CHECKPOINT_NAME)
    log_path = os.path.join(run_dir, LOG_NAME)

    saved = None
    if resume:
        saved, warning = ckpt_io.load_for_resume(run_dir)
        if warning:
            emit("message", {"text": f"warning: {warning}"})
    elif os.path.exists(ckpt_path) and not force:
        raise ConfigError(f"{run_dir} already holds a run; add --resume to continue it or --force to start over")
    config = resolve_config(overrides, saved.config if saved else None, allow_change)

    with open_corpus(corpus_path) as corpus:
        vocab = corpus.vocab
        train_tokens = corpus.split("train")
        stream = BatchStream(train_tokens, config.batch_size, config.seq_len, name="train")
        val_stream = _eval_stream(corpus.split("val"), config)
        if val_stream is None and config.early_stop_patience:
            raise ConfigError("--early-stop-patience needs a validation split of at least seq_len + 1 tokens "
                              "(prepare the corpus with --val-frac > 0)")
        if saved is not None:
            if Vocab.from_dict(saved.vocab) != vocab:
                raise CheckpointError(f"the checkpoint's vocabulary ({len(saved.vocab.get('symbols', []))} "
                                      f"symbols) does not match the corpus {corpus_path} ({vocab.size} symbols)")
            if saved.params.size != Layout(model_shapes(config.model, vocab.size, config.hidden_size,
                                                        config.num_layers)).size:
                raise CheckpointError(f"the checkpoint's parameters ({saved.params.size} values) do not fit its "
                                      f"configuration ({config.model}, {config.num_layers} layers, hidden "
                                      f"{config.hidden_size}); it is damaged or from another program")
            if saved.state.get("train_tokens") != len(train_tokens):
                raise CheckpointError(f"the corpus {corpus_path} is not the one this run was trained on "
                                      f"(train split {len(train_tokens)} tokens, the run had "
                                      f"{saved.state.get('train_tokens')})")
        os.makedirs(run_dir, exist_ok=True)
        if not os.access(run_dir, os.W_OK):
            raise ConfigError(f"run directory {run_dir} is not writable")
        ckpt_io.remove_stale_temps(run_dir)
        threads = _set_threads(config.threads)
        backend = get_backend(config.backend)
        model = Model(vocab.size, config.hidden_size, config.dtype, config.model, config.num_layers)
        optimizer = Optimizer(config, model.layout.size, model.dtype, backend)
        gflat = model.layout.zeros(model.dtype)  # (P,) gradients, same layout as the parameters
        G = model.layout.views(gflat)
        rng = np.random.default_rng(config.seed)
        if saved is None:
            model.init(rng, config.init_scale, config.init)
            state = RunState(train_tokens=len(train_tokens), vocab_size=vocab.size)
            h = model.zero_state(config.batch_size)  # (N, H)
            if os.path.exists(log_path):
                os.unlink(log_path)
        else:
            model.load_flat(saved.params)
            for name, buf in optimizer.state.items():
                buf[...] = saved.optimizer[name]
            state = RunState(**{k: v for k, v in saved.state.items() if k in RUNSTATE_FIELDS})
            optimizer.t = state.step
            rng.bit_generator.state = state.rng
            h = saved.hidden.astype(model.dtype, copy=True)
            _truncate_log(log_path, state.step)

        # the kernel paths of the training step and of evaluation, decided once for the run (kernels.dispatch)
        plan = backend.plan_for(model.P, config.batch_size, config.seq_len, config.dropout > 0, threads)
        eval_plan = backend.plan_for(model.P, val_stream.batch_size, config.seq_len, False, threads) \
            if val_stream else None
        spe = stream.steps_per_epoch
        chars_per_step = config.batch_size * config.seq_len
        max_steps = config.max_steps or math.inf
        if config.max_epochs:
            max_steps = min(max_steps, math.ceil(config.max_epochs * spe))
        emit("start", {"config": config.to_dict(), "model": model.describe(), "steps_per_epoch": spe,
                       "train_tokens": len(train_tokens), "val_streams": val_stream.batch_size if val_stream else 0,
                       "threads": threads, "plan": plan.describe(), "resumed_from": state.step if saved else None,
                       "max_steps": None if max_steps == math.inf else max_steps})

        def save(path=ckpt_path):
            state.rng = rng.bit_generator.state
            ckpt_io.save(path, ckpt_io.Checkpoint(
                config=config.to_dict(), vocab=vocab.to_dict(), params=model.flat,
                optimizer=optimizer.state, hidden=h, state=_jsonable(dataclasses.asdict(state))))
            if path == ckpt_path and config.keep_checkpoints > 1:
                ckpt_io.keep_history(run_dir, state.step, config.keep_checkpoints)
            emit("checkpoint", {"step": state.step, "path": path})

        def run_eval():
            val = evaluate(backend, model, val_stream, eval_plan)
            corpus.release_pages()
            if val < state.best_val:
                state.best_val, state.best_step, state.evals_since_best = val, state.step, 0
                save(os.path.join(run_dir, ckpt_io.BEST_NAME))
            else:
                state.evals_since_best += 1
            emit("eval", {"step": state.step, "val_loss": val, "best_val": state.best_val})
            return val

        def show_sample():
            srng = np.random.default_rng([config.seed, state.step])
            ids = list(generate(backend, model.P, vocab, length=config.sample_length, rng=srng, dtype=model.dtype))
            emit("sample", {"step": state.step, "text": vocab.decode(np.array(ids, dtype=np.int32))})

        stop_reason = None
        val_loss = None
        session_start = time.perf_counter()
        elapsed_at_start = state.elapsed
        window_start, window_steps = time.perf_counter(), 0
        last_release = window_start
        first_step = True
        log_file = open(log_path, "a")
        try:
            with StopFlag() as stop:
                while True:
                    if state.step >= max_steps:
                        stop_reason = "max_steps" if config.max_steps and state.step >= config.max_steps \
                            else "max_epochs"
                        break
                    if config.max_time and state.elapsed >= config.max_time:
                        stop_reason = "max_time"
                        break
                    if state.index == 0 or config.reset_hidden:
                        h[...] = 0  # a new epoch starts every stream afresh
                    x, y = stream.batch(state.epoch, state.index)
                    t0 = time.perf_counter()
                    masks = make_masks(rng, config.dropout, model.num_layers, config.seq_len, config.batch_size,
                                       model.hidden_size, model.dtype)  # (L, T, N, H) or None
                    loss, h_next = backend.forward_backward(model.P, G, x, y, h, masks, plan=plan)
                    norm = backend.clip_gradients(gflat, config.clip, config.max_grad_norm)
                    problem = None
                    if not (math.isfinite(loss) and math.isfinite(norm)):
                        problem = f"loss became {loss:.4g} (gradient norm {norm:.4g}) at step {state.step + 1}"
                    else:
                        optimizer.update(model.flat, gflat, state.lr_scale * learning_rate(config, state.step, spe))
                        if math.isnan(state.smooth_loss):
                            state.first_loss = state.smooth_loss = loss
                        else:
                            state.smooth_loss = SMOOTHING * state.smooth_loss + (1 - SMOOTHING) * loss
                        if config.divergence_factor and \
                                state.smooth_loss > config.divergence_factor * state.first_loss:
                            problem = (f"smoothed loss {state.smooth_loss:.4f} exceeds {config.divergence_factor}x "
                                       f"the starting loss {state.first_loss:.4f} at step {state.step + 1}")
                    if problem is not None:
                        if (config.on_divergence == "rollback" and state.rollbacks < config.max_rollbacks
                                and os.path.exists(ckpt_path)):
                            back = ckpt_io.load(ckpt_path)
                            model.load_flat(back.params)
                            for name, buf in optimizer.state.items():
                                buf[...] = back.optimizer[name]
                            scale, rollbacks, elapsed = state.lr_scale / 2, state.rollbacks + 1, state.elapsed
                            state = RunState(**{k: v for k, v in back.state.items() if k in RUNSTATE_FIELDS})
                            state.lr_scale, state.rollbacks, state.elapsed = scale, rollbacks, elapsed
                            optimizer.t = state.step
                            rng.bit_generator.state = state.rng
                            h = back.hidden.astype(model.dtype, copy=True)
                            log_file.close()
                            _truncate_log(log_path, state.step)
                            log_file = open(log_path, "a")
                            emit("message", {"text": f"divergence: {problem}; rolled back to the checkpoint at "
                                                     f"step {state.step} and halved the learning rate (now "
                                                     f"{scale:g}x --lr; rollback {rollbacks} of "
                                                     f"{config.max_rollbacks})"})
                            continue
                        raise DivergenceError(
                            problem + "; " + (f"the last good checkpoint is step {saved_step(ckpt_path)} in "
                                              f"{ckpt_path}" if os.path.exists(ckpt_path)
                                              else "no checkpoint was written yet")
                            + "; try a lower --lr or --max-grad-norm, or --on-divergence rollback")
                    h = h_next
                    state.step += 1
                    state.index += 1
                    if state.index == spe:
                        state.epoch, state.index = state.epoch + 1, 0
                    now = time.perf_counter()
                    state.elapsed = elapsed_at_start + (now - session_start)
                    window_steps += 1
                    if now - last_release >= RELEASE_EVERY:
                        corpus.release_pages()  # read pages leave our RSS; the page cache keeps them
                        last_release = now
                    if first_step:
                        first_step = False
                        emit("compiled", {"seconds": now - t0})
                        window_start, window_steps = now, 0  # the first step (JIT compile) is not timed

                    val_loss = None
                    if val_stream is not None and config.eval_every and state.step % config.eval_every == 0:
                        val_loss = run_eval()
                    if config.sample_every and state.step % config.sample_every == 0:
                        show_sample()
                    if state.step % config.log_every == 0 or val_loss is not None:
                        seconds = now - window_start
                        cps = window_steps * chars_per_step / seconds if window_steps and seconds > 0 else None
                        row = {"step": state.step, "epoch": round(state.epoch + state.index / spe, 4),
                               "loss": state.smooth_loss, "batch_loss": loss,
                               "lr": state.lr_scale * learning_rate(config, state.step - 1, spe),
                               "grad_norm": norm, "chars_per_sec": cps,
                               "rss_mb": psutil.Process().memory_info().rss / 2**20,
                               "elapsed": state.elapsed}
                        if val_loss is not None:
                            row["val_loss"] = val_loss
                        row["eta"] = _eta(config, state, max_steps, seconds / window_steps if window_steps else None)
                        log_file.write(json.dumps(row) + "\n")
                        log_file.flush()
                        emit("log", dict(row, max_steps=None if max_steps == math.inf else max_steps))
                        window_start, window_steps = time.perf_counter(), 0
                    if config.checkpoint_every and state.step % config.checkpoint_every == 0:
                        save()
                    if (config.early_stop_patience and val_loss is not None
                            and state.evals_since_best >= config.early_stop_patience):
                        stop_reason = "early_stop"
                        break
                    if stop.signum is not None:
                        stop_reason = "signal"
                        break
                if stop_reason != "signal" and val_stream is not None and val_loss is None:
                    val_loss = run_eval()
                save()
                signum = stop.signum
        finally:
            log_file.close()
        summary = {"step": state.step, "epoch": state.epoch + state.index / spe, "stop_reason": stop_reason,
                   "loss": state.smooth_loss, "val_loss": val_loss, "best_val": state.best_val
                   if math.isfinite(state.best_val) else None, "checkpoint": ckpt_path, "elapsed": state.elapsed,
                   "signal": signum}
        emit("end", summary)
        return summary


def saved_step(path):
    try:
        return ckpt_io.load(path).state.get("step")
    except CheckpointError:
        return "?"


def _eta(config, state, max_steps, seconds_per_step):
    """Seconds left, from the step limit and the time limit, whichever comes first (None if unbounded)."""
    left = []
    if max_steps != math.inf and seconds_per_step:
        left.append((max_steps - state.step) * seconds_per_step)
    if config.max_time:
        left.append(max(0.0, config.max_time - state.elapsed))
    return min(left) if left else None


def _jsonable(d):
    """JSON-safe copy: numpy scalars to Python, infinities kept as strings JSON understands via float()."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _jsonable(v)
        elif isinstance(v, (np.integer,)):
            out[k] = int(v)
        elif isinstance(v, (np.floating,)):
            out[k] = float(v)
        else:
            out[k] = v
    return out
