"""The training loop: schedule, evaluation, checkpoints, progress events and signals. No math.

`train()` reports what happens through a callback `on_event(kind, data)` (the CLI prints; the library does not):

    start       the resolved configuration, model and data sizes
    compiled    seconds taken by the first step (includes JIT compilation), excluded from chars/s
    log         a progress row (also appended to RUN_DIR/log.jsonl): step, epoch, loss, chars_per_sec, rss_mb, ...
    evaluating  how far a running evaluation is (at most every validation.PROGRESS_INTERVAL seconds), with its ETA
    eval        a validation loss, and how many val tokens it was computed on
    sample      a short generated text
    checkpoint  a checkpoint written
    message     a line for the user
    end         the summary (also returned)
"""

import contextlib
import copy
import dataclasses
import json
import math
import os
import time
import uuid

import numpy as np
import psutil

from fastrnn import checkpoint as ckpt_io
from fastrnn.checkpoint import RunState
from fastrnn import rundir
from fastrnn.budget import TimeBudget
from fastrnn.distributed import SINGLE, digest
from fastrnn.config import DEFAULT_LR, RESUME_CHANGEABLE, RESUME_CHANGEABLE_WITH_ALLOW, TrainConfig
from fastrnn.corpus import BatchStream, Vocab, open_corpus
from fastrnn.dropout import make_masks
from fastrnn.errors import CheckpointError, ConfigError, DivergenceError, FastrnnError, FileError, os_reason
from fastrnn.guards import StopFlag
from fastrnn.model import Model, get_backend
from fastrnn.params import Layout, model_shapes
from fastrnn.optim import Optimizer, learning_rate
from fastrnn.sample import generate
from fastrnn.validation import Scoring, keep_tokens, val_set

LOG_NAME = "log.jsonl"
DEFAULT_MAX_EPOCHS = 10.0  # used when no --max-steps/--max-epochs/--max-time is given
WARMUP_CHARS = 100  # characters of real text an unprimed sample is warmed on
SMOOTHING = 0.99  # train loss shown = exponential moving average, as min-char-rnn's smooth_loss
HEALTHY_RISE = 1.1  # a checkpoint is healthy while the smoothed loss is within this factor of its lowest so far,
RECENT_RISE = 1.25  # and the loss of the last ~10 steps (RECENT_SMOOTHING) within this one
RECENT_SMOOTHING = 0.9
STUCK_RISE, STUCK_STEPS = 1.5, 100  # with --on-divergence rollback, a smoothed loss above STUCK_RISE x its lowest
# for STUCK_STEPS steps in a row is a divergence too (well above the noise of the smoothed loss of tiny batches)


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
        config = TrainConfig(**values).normalize()
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


class _NoLog:
    """The log of a rank other than 0: rank 0 alone writes log.jsonl."""

    foreign = 0

    def write(self, row):
        pass

    def truncate_after(self, step):
        pass

    def close(self):
        pass


class RunLog:
    """RUN_DIR/log.jsonl, held open for the run: one JSON row a line, flushed as written (a crash loses no row
    already written); rows past a step, and rows of another run (another run_id), are dropped when a run resumes
    or rolls back to it."""

    def __init__(self, path, run_id, keep_until=None, legacy=False):
        """keep_until: None to start a new log (an old one is removed), else the step whose rows are kept.
        legacy: rows without a run id are this run's (it began before fastrnn had run ids).
        self.foreign: the number of rows of other runs dropped."""
        self.path, self.run_id, self.legacy, self.foreign = path, run_id, legacy, 0
        if keep_until is None:
            if os.path.exists(path):
                os.unlink(path)
        else:
            self.foreign = self._truncate(keep_until)
        try:
            self.file = open(path, "a")
        except OSError as exc:
            raise FileError(f"cannot write {path}: {os_reason(exc)}") from exc

    def write(self, row):
        try:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        except OSError as exc:  # a full disk, the run directory gone, an I/O error: the run stops here
            ckpt = os.path.join(os.path.dirname(self.path), ckpt_io.CHECKPOINT_NAME)
            tail = (f"the last checkpoint, step {saved_step(ckpt)} in {ckpt}, is intact; resume with --resume"
                    if os.path.exists(ckpt) else "no checkpoint was written yet")
            raise FileError(f"cannot write {self.path}: {os_reason(exc)}; the run stopped; {tail}") from exc

    def truncate_after(self, step):
        """Drop the rows past `step`, atomically (a new file renamed over the old, the handle moved to it)."""
        self.file.close()
        self._truncate(step)
        self.file = open(self.path, "a")

    def _truncate(self, step):
        if not os.path.exists(self.path):
            return 0
        with open(self.path, "rb") as f:
            rows = [line for line in f if line.strip()]
        keep, foreign = [], 0
        for line in rows:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a row cut by a crash, or damaged
            if not isinstance(row, dict) or row.get("run_id", self.run_id if self.legacy else "") != self.run_id:
                foreign += 1
            elif isinstance(row.get("step", 0), int) and row.get("step", 0) <= step:
                keep.append(line.rstrip(b"\r\n") + b"\n")
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.writelines(keep)
            os.replace(tmp, self.path)
        except OSError as exc:  # the old log is left as it was
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise FileError(f"cannot rewrite {self.path}: {os_reason(exc)}") from exc
        return foreign

    def close(self):
        try:
            self.file.close()
        except OSError:  # the failed write has been reported (FileError); its buffered row is lost
            pass


def _set_threads(n):
    from fastrnn.kernels.threads import set_threads

    return set_threads(n or os.cpu_count() or 1)


ARCHITECTURE = ("model", "num_layers", "hidden_size")  # what --init-from takes from its checkpoint


def train(corpus_path, run_dir, overrides=None, *, resume=False, allow_change=False, force=False, on_event=None,
          init_from=None, comm=SINGLE):
    """Train a model on CORPUS.h5 into `run_dir`. Returns a summary dict (also sent as the 'end' event).

    resume: continue from run_dir/checkpoint.h5 exactly where it stopped.
    init_from: a checkpoint or run directory whose parameters a new run starts from (fine-tuning): its
    architecture, a fresh optimizer state and step count, any learning rate and schedule; the corpus must have
    the checkpoint's vocabulary (prepare it with --vocab-from).
    force: start a new run even if run_dir holds one (the old run's files are removed before the new run writes).

    comm: fastrnn.distributed.SINGLE, or the MPIWorld of a data-parallel run (every rank calls train() alike;
    rank 0 alone writes the run directory and emits events).

    The session holds an exclusive lock on run_dir (rundir.RunLock): a second writer is refused.
    """
    started = time.perf_counter()  # --max-time counts from here
    emit = on_event if on_event is not None and comm.is_root else (lambda kind, data: None)
    run_dir = os.fspath(run_dir)
    with contextlib.ExitStack() as held:
        failure = None
        try:
            if resume and not os.path.isdir(run_dir):
                raise CheckpointError(f"nothing to resume: {run_dir} does not exist")
            if comm.is_root:  # released on return or error, and by the OS on kill -9
                held.enter_context(rundir.RunLock(run_dir))
        except FastrnnError as exc:
            failure = exc
        comm.first_error(failure)
        return _train_locked(corpus_path, run_dir, overrides, resume, allow_change, force, emit, init_from, comm,
                             started)


def _parent(init_from, overrides, resume):
    """The checkpoint --init-from names, and the overrides with its architecture (ConfigError where the options
    given contradict it or do nothing with it)."""
    if resume:
        raise ConfigError("--init-from starts a new run; --resume continues one (a resumed run remembers where it "
                          "was initialised from): leave --init-from out")
    parent = ckpt_io.load(init_from)
    if not ckpt_io.is_finite(parent):
        raise CheckpointError(f"{parent.path} holds non-finite values (NaN/inf: the run diverged); cannot start "
                              f"from it")
    overrides = dict(overrides)
    for name in ARCHITECTURE:
        value = parent.config.get(name)
        if name in overrides and overrides[name] != value:
            raise ConfigError(f"--{name.replace('_', '-')} {overrides[name]} conflicts with --init-from {init_from} "
                              f"({value}); a fine-tuned model keeps the architecture of its checkpoint")
        overrides[name] = value
    if parent.config.get("dtype"):
        overrides.setdefault("dtype", parent.config["dtype"])  # the checkpoint's precision unless told otherwise
    for name in ("init", "init_scale"):
        if name in overrides:
            raise ConfigError(f"--{name.replace('_', '-')} has no effect with --init-from (the parameters come "
                              f"from {init_from})")
    return parent, overrides


def _train_locked(corpus_path, run_dir, overrides, resume, allow_change, force, emit, init_from=None, comm=SINGLE,
                  started=None):
    """train(), with the run directory's lock held (by rank 0)."""
    failure = saved = parent = config = None
    try:
        saved, parent, config = _session_inputs(run_dir, overrides, resume, allow_change, force, emit, init_from,
                                                comm)
    except FastrnnError as exc:
        failure = exc
    comm.first_error(failure)  # rank 0 read the run directory; every rank gets what it found
    if comm.size > 1:
        saved, parent, config = comm.bcast((saved, parent, config))
    with contextlib.ExitStack() as opened:
        try:
            corpus = opened.enter_context(open_corpus(corpus_path))
            run = Run(config, corpus, corpus_path, run_dir, saved, emit, parent, comm, started)
        except FastrnnError as exc:
            failure = exc
        comm.first_error(failure)  # a rank that cannot start stops them all, with its reason
        try:
            return run.loop()
        finally:
            run.log.close()


def _session_inputs(run_dir, overrides, resume, allow_change, force, emit, init_from, comm):
    """(the checkpoint resumed from or None, the --init-from checkpoint or None, the configuration), read by rank 0
    (None elsewhere: broadcast by the caller)."""
    if not comm.is_root:
        return None, None, None
    rundir.finish_discard(run_dir)  # a --force that a kill interrupted
    saved = parent = None
    if init_from is not None:
        parent, overrides = _parent(init_from, overrides or {}, resume)
    if resume:
        saved, warning = ckpt_io.load_for_resume(run_dir)
        if not ckpt_io.is_finite(saved):
            raise CheckpointError(f"{saved.path} holds non-finite values (NaN/inf: the run diverged); cannot "
                                  f"resume from it")
        if warning:
            emit("message", {"text": f"warning: {warning}"})
        if not saved.state.healthy:
            emit("message", {"text": f"warning: {saved.path} was written while the loss was climbing (not "
                                     f"healthy); {ckpt_io.LAST_GOOD_NAME}, if present, is the last healthy checkpoint"})
    elif rundir.run_files(run_dir) and not force:
        raise ConfigError(f"{run_dir} already holds a run ({', '.join(rundir.run_files(run_dir))}); add --resume "
                          f"to continue it or --force to start over")
    config = resolve_config(dict(overrides or {}), saved.config if saved else None, allow_change)
    return saved, parent, config


class Run:
    """One session of a run: the model, optimizer, data and counters, and the phases of the training loop."""

    def __init__(self, config, corpus, corpus_path, run_dir, saved, emit, parent=None, comm=SINGLE, started=None):
        """started: the session's start on time.perf_counter (--max-time counts from it); None: now."""
        self.config, self.corpus, self.run_dir, self.emit, self.comm = config, corpus, run_dir, emit, comm
        self.started = time.perf_counter() if started is None else started
        self.ckpt_path = os.path.join(run_dir, ckpt_io.CHECKPOINT_NAME)
        self.vocab = corpus.vocab
        train_tokens = corpus.split("train")
        self.train_tokens, self.corpus_path = train_tokens, corpus_path
        if comm.size > 1:  # every rank must read the same corpus, and have streams to train on
            comm.check_same("the corpus they opened (its size and metadata checksum)", corpus.fingerprint())
            if config.batch_size < comm.size:
                raise ConfigError(f"--batch-size {config.batch_size} is smaller than the {comm.size} ranks; each "
                                  f"rank needs at least one stream")
        self.rows = comm.rows(config.batch_size)  # (lo, hi): this rank's block of the N streams
        self.stream = BatchStream(train_tokens, config.batch_size, config.seq_len, name="train",
                                  shuffle=config.shuffle, seed=config.seed, check=corpus.checker("train"),
                                  rows=self.rows if comm.size > 1 else None)
        self.valset = val_set(corpus.split("val"), config, corpus.checker("val"), comm)
        self.val_stream = None if self.valset is None else self.valset.stream
        # unprimed samples start from a state warmed on real text (the start of the val split, else of train), not
        # from a zero state fed a newline, which training never sees; kept in every checkpoint for `fastrnn sample`
        warm = "val" if len(corpus.split("val")) >= 2 else "train"
        self.warmup = corpus.read(warm, 0, WARMUP_CHARS).tolist()
        if self.val_stream is None and config.early_stop_patience:
            raise ConfigError("--early-stop-patience needs a validation split of at least seq_len + 1 tokens "
                              "(prepare the corpus with --val-frac > 0)")
        if saved is not None:
            _check_resumable(saved, config, self.vocab, train_tokens, corpus_path)
        if parent is not None and Vocab.from_dict(parent.vocab) != self.vocab:
            theirs = Vocab.from_dict(parent.vocab)
            raise CheckpointError(f"the vocabulary of {corpus_path} ({self.vocab.size} symbols) is not the one of "
                                  f"{parent.path} ({theirs.size} symbols); prepare the corpus with --vocab-from "
                                  f"{parent.path}")
        if comm.is_root:
            try:
                os.makedirs(run_dir, exist_ok=True)
            except OSError as exc:  # read-only, under a regular file, in /proc, ...
                raise FileError(f"cannot create run directory {run_dir}: {os_reason(exc)}") from exc
            if not os.access(run_dir, os.W_OK):
                raise ConfigError(f"run directory {run_dir} is not writable")
            ckpt_io.remove_stale_temps(run_dir)
        # several ranks on one machine share its cores (never oversubscribed unless --threads says so)
        self.threads = _set_threads(config.threads or (comm.default_threads() if comm.size > 1 else 0))
        self.backend = get_backend(config.backend)
        self.model = Model(self.vocab.size, config.hidden_size, config.dtype, config.model, config.num_layers)
        self.optimizer = Optimizer(config, self.model.layout.size, self.model.dtype, self.backend)
        # (P + 2,): the gradients (P,), same layout as the parameters, then two slots summed with them over the
        # ranks: this rank's share of the loss, and 1 if this rank failed to read its rows
        self.gbuf = np.zeros(self.model.layout.size + 2, dtype=self.model.dtype)
        self.gflat = self.gbuf[:-2]
        self.G = self.model.layout.views(self.gflat)
        self.rng = np.random.default_rng(config.seed)
        if saved is None:
            self.model.init(self.rng, config.init_scale, config.init)
            self.state = RunState(train_tokens=len(train_tokens), vocab_size=self.vocab.size,
                                  run_id=comm.bcast(uuid.uuid4().hex[:16]), corpus=os.path.abspath(corpus_path))
            if parent is not None:  # the same draws as a run from scratch were made: the rest of the run's
                self.model.load_flat(parent.params.astype(self.model.dtype))  # random numbers do not depend on it
                self.state.init_from = f"{os.path.abspath(parent.path)} at step {parent.state.step}"
            self.h = self.model.zero_state(self.rows[1] - self.rows[0])  # (N, S): this rank's streams
        else:
            self.restore(saved)
        self.keep_eval_tokens()
        # a run from before run ids gets one now; its checkpoints and rows without an id are its own
        self.legacy_id = not self.state.run_id
        if self.legacy_id:
            self.state.run_id = comm.bcast(uuid.uuid4().hex[:16])
        self.state.ranks = comm.size
        # whether checkpoint.h5 on disk is healthy (then it is kept as last-good.h5 before an unhealthy one)
        self.ckpt_healthy = saved is not None and saved.path == self.ckpt_path and ckpt_io.is_healthy(saved)
        # the kernel paths of the training step and of evaluation, decided once for the run (kernels.dispatch)
        self.plan = self.backend.plan_for(self.model.P, self.rows[1] - self.rows[0], config.seq_len,
                                          config.dropout > 0, self.threads, precision=config.precision)
        val_rows = None if self.val_stream is None else comm.rows(self.val_stream.batch_size)
        self.eval_plan = None if val_rows is None or val_rows[1] == val_rows[0] else self.backend.plan_for(
            self.model.P, val_rows[1] - val_rows[0], config.seq_len, False, self.threads,
            precision=config.precision)
        self.spe = self.stream.steps_per_epoch
        self.max_steps = config.max_steps or math.inf
        if config.max_epochs:
            self.max_steps = min(self.max_steps, math.ceil(config.max_epochs * self.spe))
        self.total_steps = None if self.max_steps == math.inf else self.max_steps  # where a cosine schedule ends
        emit("start", {"config": config.to_dict(), "model": self.model.describe(), "steps_per_epoch": self.spe,
                       "train_tokens": len(train_tokens),
                       "val_streams": self.val_stream.batch_size if self.val_stream else 0, "threads": self.threads,
                       "val_tokens": self.valset.tokens if self.valset else 0,
                       "validation": self.valset.describe() if self.valset else None,
                       "plan": self.plan.describe(), "resumed_from": self.state.step if saved else None,
                       "run_id": self.state.run_id, "init_from": self.state.init_from or None, "ranks": comm.size,
                       "max_steps": None if self.max_steps == math.inf else self.max_steps})
        # last, so that nothing in here can fail with the file open (train() closes it after the loop); a new
        # run's first write, so an old run (--force) goes first: nothing of it is lost before this point
        if saved is None and comm.is_root:
            rundir.discard_run(run_dir)
        self.log = RunLog(os.path.join(run_dir, LOG_NAME), self.state.run_id,
                          None if saved is None else self.state.step, legacy=self.legacy_id) if comm.is_root \
            else _NoLog()
        if self.log.foreign:
            emit("message", {"text": f"warning: dropped {self.log.foreign} row(s) of {LOG_NAME} that are not "
                                     f"this run's (another run id)"})
        if config.precision == "bf16" and self.plan.precision != "bf16":
            from fastrnn.kernels.dispatch import bf16_refusal

            why = bf16_refusal(self.plan.N, self.plan.threads, self.plan.dtype) or "the plan has no bf16 path"
            emit("message", {"text": f"--precision bf16: {why}; training in float32"})

    def loop(self):
        config, stop_reason, val_loss = self.config, None, None
        self.session_start, self.elapsed_at_start = time.perf_counter(), self.state.elapsed
        self.wall_at_start = self.state.wall_seconds or self.state.elapsed  # (a checkpoint without it: training's)
        self.budget = TimeBudget(config.max_time, self.wall_at_start, self.started,
                                 self.model.flat.nbytes * (1 + len(self.optimizer.state)))
        self.eval_seconds, self.eval_skipped, self.last_eval, self.time_agreed = 0.0, False, None, False
        self.window_start, self.window_steps = time.perf_counter(), 0
        self.first_step = True
        announced = False  # the "compiling" event was emitted: once, also if the first step is rolled back
        # the last step with a progress row, that row, and the last step's (loss, norm)
        self.logged_step, self.last_row, last = self.state.step, None, None
        self.signum = None  # the signal the ranks agreed to stop at (several ranks)
        self.allreduce_seconds = 0.0  # in the gradient Allreduce since the last progress row (several ranks)
        if self.state.step == 0 and config.on_divergence == "rollback":
            self.save()  # the initial parameters: a healthy point to roll back to before the first checkpoint
        # overflow/NaN warnings of the numpy backend would add lines to the one a divergence ends with
        with StopFlag() as stop, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            self.stop = stop
            if self.state.eval_pending:  # the evaluation a signal or --max-time stopped, before the next step
                stop_reason, val_loss = self.complete_pending_eval()
            while stop_reason is None:
                # limits: the step, epoch and time limits end the run before the next step
                stop_reason = self.limit_reached()
                if stop_reason:
                    break
                if not announced:  # the first step compiles the kernels: seconds of silence, said beforehand
                    self.emit("compiling", {})
                    announced = True
                # step: forward, backward, clip and update; a non-finite or diverging loss is a problem
                loss, norm, h_next, problem, started = self.train_step()
                # divergence: roll back to the last checkpoint, or stop with the reason
                if problem is not None:
                    self.recover(problem)
                    continue
                # advance: the carried state, the counters, the corpus pages read, the compile time
                now = self.advance(h_next, started)
                last = (loss, norm)
                try:
                    # evaluate and sample at their intervals
                    val_loss = self.maybe_evaluate()
                    if self.state.eval_pending:  # stopped: the step's row is written, a resumed run completes it
                        self.write_log_row(loss, norm, None, now)
                        self.state.pending_row, stop_reason = self.last_row, self.eval_stopped_by
                        break
                    self.maybe_sample()
                    # log a progress row, write a checkpoint at their intervals
                    self.maybe_log(loss, norm, val_loss, now)
                    self.maybe_checkpoint()
                except _NonFinite as exc:  # a checkpoint that would have held NaN/inf was not written
                    self.recover(str(exc))
                    continue
                # early stop and signals end the run after a whole step
                if (config.early_stop_patience and val_loss is not None
                        and self.state.evals_since_best >= config.early_stop_patience):
                    stop_reason = "early_stop"
                    break
                stop.check()  # a second signal swallowed by a finalizer
                if self.agree_signal(stop) is not None:
                    stop_reason = "signal"
                    break
            val_loss = self.finish(stop_reason, val_loss, last)
            signum = self.signum if self.comm.size > 1 else stop.signum
        state = self.state
        summary = {"step": state.step, "epoch": state.epoch + state.index / self.spe, "stop_reason": stop_reason,
                   "loss": state.smooth_loss, "val_loss": val_loss, "best_val": state.best_val
                   if math.isfinite(state.best_val) else None, "best_step": state.best_step if
                   math.isfinite(state.best_val) else None, "best_checkpoint": os.path.join(
                       self.run_dir, ckpt_io.BEST_NAME) if math.isfinite(state.best_val) else None,
                   "checkpoint": self.ckpt_path,
                   "elapsed": state.elapsed, "eval_seconds": self.eval_seconds,
                   "session_seconds": time.perf_counter() - self.started, "signal": signum}
        self.emit("end", summary)
        return summary

    def finish(self, stop_reason, val_loss, last):
        """A last evaluation (unless a signal stopped the run, the last step evaluated or no time is left for it),
        the last step's row in log.jsonl, the final checkpoint. Returns the val loss of the last step."""
        try:
            final_val = None
            if stop_reason != "signal" and self.val_stream is not None and val_loss is None \
                    and not self.state.eval_pending and self.eval_fits("the final evaluation"):
                val_loss = final_val = self.validate(final=True)
            # the last step and the final evaluation always reach log.jsonl (for plots and `info`)
            if last is not None and self.state.step != self.logged_step:
                self.write_log_row(*last, final_val, time.perf_counter())
            elif final_val is not None and self.last_row is not None:  # the last row gains its val loss
                self.log.truncate_after(self.state.step - 1)
                self.log.write(dict(self.last_row, **self.val_fields(final_val)))
            self.save()
        except _NonFinite as exc:
            raise DivergenceError(self.divergence_message(str(exc))) from None
        return val_loss

    # ---------------------------------------------------------------------------------------------- phases

    def limit_reached(self):
        """'max_steps', 'max_epochs' or 'max_time' if that limit is reached, else None."""
        if self.state.step >= self.max_steps:
            return "max_steps" if self.config.max_steps and self.state.step >= self.config.max_steps \
                else "max_epochs"
        if self.time_agreed if self.comm.size > 1 else self.time_up():
            return "max_time"
        return None

    def time_up(self):
        """--max-time leaves no time for another step and what may follow it (budget.TimeBudget.time_up)."""
        return self.budget.time_up(self.valset.batches if self.valset else 0, bool(self.config.sample_every))

    def agree_signal(self, stop):
        """The signal that stops the run at this step boundary (or None): this process's, or, with several ranks,
        the one any rank received; the ranks also agree on the elapsed time (the slowest clock) and on whether
        --max-time leaves time for another step (any rank's no), so that it ends them all at the same step."""
        if self.comm.size == 1:
            return stop.signum
        signum, elapsed, late = self.comm.agree([stop.signum or 0, self.state.elapsed, self.time_up()])
        self.state.elapsed, self.time_agreed = float(elapsed), bool(late)
        self.signum = int(signum) or None
        return self.signum

    def train_step(self):
        """One minibatch: returns (loss, gradient norm, the new carried state, a problem or None, start time).
        The update is skipped when the loss or the norm is not finite.

        With several ranks each computes its block of the streams, its loss and gradients scaled by its share of
        the batch, and one Allreduce sums them (with the loss, and whether any rank failed to read its rows), so
        every rank clips and updates alike."""
        config, state, model, comm = self.config, self.state, self.model, self.comm
        if state.index == 0 or config.reset_hidden or not self.stream.carries_state:
            self.h[...] = 0  # a new epoch starts every stream afresh
        failure = None
        try:
            x, y = self.stream.batch(state.epoch, state.index)
        except FastrnnError as exc:  # a damaged corpus: with several ranks, every rank stops at this step
            if comm.size == 1:
                raise
            failure = exc
        started = time.perf_counter()
        # the masks of the whole batch, this rank's rows taken: the same numbers whatever the number of ranks
        masks = make_masks(self.rng, config.dropout, model.num_layers, config.seq_len, config.batch_size,
                           model.hidden_size, model.dtype)  # (L, T, N, H) or None
        if comm.size == 1:
            loss, h_next = self.backend.forward_backward(model.P, self.G, x, y, self.h, masks, plan=self.plan)
        else:
            lo, hi = self.rows
            if failure is None:
                if masks is not None:
                    masks = np.ascontiguousarray(masks[:, :, lo:hi])
                loss, h_next = self.backend.forward_backward(model.P, self.G, x, y, self.h, masks,
                                                             plan=self.plan)
                share = model.dtype.type((hi - lo) / config.batch_size)
                self.gflat *= share
                self.gbuf[-2:] = loss * share, 0
            else:
                h_next = self.h
                self.gbuf[:] = 0
                self.gbuf[-1] = 1
            t0 = time.perf_counter()
            comm.allreduce(self.gbuf)
            self.allreduce_seconds += time.perf_counter() - t0
            if self.gbuf[-1]:
                comm.first_error(failure)
            loss = float(self.gbuf[-2])
        norm = self.backend.clip_gradients(self.gflat, config.clip, config.max_grad_norm)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            return loss, norm, h_next, f"loss became {loss:.4g} (gradient norm {norm:.4g}) at step " \
                                       f"{state.step + 1}", started
        lr = state.lr_scale * learning_rate(config, state.step, self.spe, self.total_steps)
        self.optimizer.update(model.flat, self.gflat, lr)
        total = float(model.flat.sum())  # fast; a float32 overflow of the sum is told apart below
        if not math.isfinite(total) and not np.all(np.isfinite(model.flat)):  # e.g. --lr inf: NaN weights
            return loss, norm, h_next, f"the parameters became non-finite in the update of step " \
                                       f"{state.step + 1} (learning rate too high)", started
        if math.isnan(state.smooth_loss):
            state.smooth_loss = loss
        else:
            state.smooth_loss = SMOOTHING * state.smooth_loss + (1 - SMOOTHING) * loss
        if math.isnan(state.first_loss):
            state.first_loss = loss
        state.recent_loss = loss if math.isnan(state.recent_loss) else \
            RECENT_SMOOTHING * state.recent_loss + (1 - RECENT_SMOOTHING) * loss
        if not state.smooth_loss >= state.low_loss:  # also when low_loss is still NaN
            state.low_loss = state.smooth_loss
        state.stuck_steps = state.stuck_steps + 1 if state.smooth_loss > STUCK_RISE * state.low_loss else 0
        problem = None
        if config.divergence_factor and state.smooth_loss > config.divergence_factor * state.first_loss:
            problem = (f"smoothed loss {state.smooth_loss:.4f} exceeds {config.divergence_factor}x the starting "
                       f"loss {state.first_loss:.4f} at step {state.step + 1}")
        elif config.divergence_factor and config.on_divergence == "rollback" \
                and state.stuck_steps >= STUCK_STEPS:  # climbed and stayed up, below the factor
            problem = (f"smoothed loss {state.smooth_loss:.4f} stayed above {STUCK_RISE}x its lowest "
                       f"({state.low_loss:.4f}) for {STUCK_STEPS} steps at step {state.step + 1}")
        return loss, norm, h_next, problem, started

    def recover(self, problem):
        """Roll back to the newest healthy checkpoint of this run with half the learning rate (--on-divergence
        rollback, while rollbacks are left), else raise DivergenceError.

        The numbered checkpoints and best.h5 of the abandoned trajectory (past the rollback point) are removed,
        and checkpoint.h5 is rewritten at the rollback point (with the lowered rate), so the directory holds one
        trajectory; the log loses the rows past it."""
        config = self.config
        target = None
        if config.on_divergence == "rollback" and self.state.rollbacks < config.max_rollbacks \
                and math.isfinite(self.state.lr_scale * config.lr):  # halving an infinite rate cannot help
            # rank 0 reads the run directory; every rank rolls back to what it found
            target, newer = self.comm.bcast(self.healthy_checkpoints() if self.comm.is_root else None)
        if target is None:
            raise DivergenceError(self.divergence_message(problem))
        before = self.state
        self.restore(target)
        self.state.keep_on_rollback(before)  # its clocks, rate scale, rollback count and id (a legacy target has none)
        self.state.lr_scale, self.state.rollbacks = before.lr_scale / 2, before.rollbacks + 1
        scale, rollbacks = self.state.lr_scale, self.state.rollbacks
        for path in newer if self.comm.is_root else ():  # first, so that keep_history in save() prunes among
            try:  # this trajectory's only
                os.unlink(path)
            except OSError:
                pass
        self.save()  # checkpoint.h5 at the rollback point: a kill from here on resumes there
        self.log.truncate_after(self.state.step)
        self.emit("message", {"text": f"divergence: {problem}; rolled back to the last healthy checkpoint (step "
                                      f"{self.state.step}, {os.path.basename(target.path)}) and halved the "
                                      f"learning rate (now {scale:g}x --lr; rollback {rollbacks} of "
                                      f"{config.max_rollbacks})"})
        self.window_start, self.window_steps = time.perf_counter(), 0  # the reload is not in chars/s
        self.allreduce_seconds = 0.0

    def healthy_checkpoints(self):
        """(the newest healthy checkpoint of this run at or before the current step, or None; the paths of this
        run's checkpoints past it, besides checkpoint.h5). Candidates: checkpoint.h5, last-good.h5, best.h5 and
        the numbered history; a checkpoint of another run (another run id), one that does not fit this run, or
        one that cannot be read is skipped."""
        paths = [self.ckpt_path] + [os.path.join(self.run_dir, name)
                                    for name in (ckpt_io.LAST_GOOD_NAME, ckpt_io.BEST_NAME)]
        paths += [path for _, path in ckpt_io.history(self.run_dir)]
        found = []
        for path in paths:
            if not os.path.exists(path):
                continue
            try:
                ckpt = ckpt_io.load(path)
                _check_resumable(ckpt, self.config, self.vocab, self.train_tokens, self.corpus_path)
            except CheckpointError:
                continue
            if (ckpt.state.run_id or (self.state.run_id if self.legacy_id else "")) != self.state.run_id:
                continue
            found.append(ckpt)
        good = [c for c in found if ckpt_io.is_healthy(c) and c.state.step <= self.state.step]
        target = max(good, key=lambda c: c.state.step, default=None)
        if target is None:
            return None, []
        step = target.state.step
        newer = {c.path for c in found if c.state.step > step and c.path != self.ckpt_path}
        newer.update(path for s, path in ckpt_io.history(self.run_dir) if s > step)  # also unreadable ones
        return target, sorted(newer)

    def divergence_message(self, problem):
        """The DivergenceError text: the problem, where the last good checkpoint is, what to try (rank 0's: the
        other ranks stop without a word)."""
        target, _ = self.healthy_checkpoints() if self.comm.is_root else (None, [])
        where = (f"the last good checkpoint is step {target.state.step} in {target.path}" if target is not None
                 else "no good checkpoint was written yet")
        if self.config.on_divergence == "rollback":
            hint = (f"gave up after {self.state.rollbacks} rollback(s) (--max-rollbacks)"
                    if self.state.rollbacks >= self.config.max_rollbacks
                    else "no rollback can help an infinite --lr" if not math.isfinite(self.config.lr)
                    else "nothing healthy to roll back to")
            return f"{problem}; {where}; {hint}; try a lower --lr or --max-grad-norm"
        return f"{problem}; {where}; try a lower --lr or --max-grad-norm, or --on-divergence rollback"

    def advance(self, h_next, started):
        """After a good step: carry the state, count the step and report the first step's time (JIT compilation,
        not counted in chars/s)."""
        state = self.state
        self.h = h_next
        state.step += 1
        state.index += 1
        if state.index == self.spe:
            state.epoch, state.index = state.epoch + 1, 0
        now = time.perf_counter()
        state.elapsed = self.elapsed_at_start + (now - self.session_start)
        if not self.first_step:  # (the first one compiles, or loads, the kernels)
            self.budget.measured("step", now - started)
        self.window_steps += 1
        if self.first_step:
            self.first_step = False
            self.emit("compiled", {"seconds": now - started})
            self.window_start, self.window_steps = now, 0  # the first step (JIT compile) is not timed
            self.allreduce_seconds = 0.0
        return now

    def maybe_evaluate(self):
        """The validation loss if this step is an evaluation step (and --max-time leaves time for it), else None."""
        if self.val_stream is not None and self.config.eval_every and self.state.step % self.config.eval_every == 0 \
                and self.eval_fits(f"the evaluation at step {self.state.step:,}"):
            return self.validate()
        return None

    def eval_fits(self, what):
        """An evaluation fits in what --max-time leaves (budget.TimeBudget.eval_fits; any rank's no is every
        rank's); if not, `what` is skipped (the first skip of the session is said)."""
        if not self.budget.limited:
            return True
        fits = self.budget.eval_fits(self.valset.batches)
        if self.comm.size > 1:
            fits = not self.comm.agree([not fits])[0]
        if not fits and not self.eval_skipped:
            self.eval_skipped, left = True, self.budget.left()
            self.emit("message", {"text": f"{what} skipped: " + (
                f"it takes about {self.budget.eval_seconds(self.valset.batches):.1f} s and {left:.1f} s are left "
                f"of --max-time" if left > 0 else "--max-time is used up")})
        return fits

    def maybe_sample(self):
        if self.comm.is_root and self.config.sample_every and self.state.step % self.config.sample_every == 0:
            started = time.perf_counter()
            srng = np.random.default_rng([self.config.seed, self.state.step])
            ids = list(generate(self.backend, self.model.P, self.vocab, length=self.config.sample_length, rng=srng,
                                dtype=self.model.dtype, warmup=self.warmup))
            self.emit("sample", {"step": self.state.step, "text": self.vocab.decode(np.array(ids, dtype=np.int32))})
            self.budget.measured("sample", time.perf_counter() - started)

    def maybe_log(self, loss, norm, val_loss, now):
        """A progress row (log.jsonl and the 'log' event) every --log-every steps and at every evaluation."""
        config, state = self.config, self.state
        if state.step % config.log_every != 0 and val_loss is None:
            return
        self.write_log_row(loss, norm, val_loss, now)

    def write_log_row(self, loss, norm, val_loss, now):
        config, state = self.config, self.state
        seconds = now - self.window_start
        steps = self.window_steps
        cps = steps * config.batch_size * config.seq_len / seconds if steps and seconds > 0 else None
        row = {"run_id": state.run_id, "step": state.step, "epoch": round(state.epoch + state.index / self.spe, 4),
               "loss": state.smooth_loss, "batch_loss": loss,
               "lr": state.lr_scale * learning_rate(config, state.step - 1, self.spe, self.total_steps),
               "grad_norm": norm, "chars_per_sec": cps,
               "rss_mb": psutil.Process().memory_info().rss / 2**20, "elapsed": state.elapsed}
        if val_loss is not None:
            row.update(self.val_fields(val_loss))
        if self.comm.size > 1:  # rank 0's time in the gradient Allreduce, per step of the window
            row["ranks"], row["allreduce_ms"] = self.comm.size, 1e3 * self.allreduce_seconds / max(steps, 1)
        row["eta"] = _eta(self.max_steps - state.step, seconds / steps if steps else None,
                          self.budget.left() if self.budget.limited else None)
        self.log.write(row)
        self.last_row = row
        self.emit("log", dict(row, max_steps=None if self.max_steps == math.inf else self.max_steps))
        self.window_start, self.window_steps, self.logged_step = time.perf_counter(), 0, state.step
        self.allreduce_seconds = 0.0

    def maybe_checkpoint(self):
        if self.config.checkpoint_every and self.state.step % self.config.checkpoint_every == 0:
            self.save()

    # ---------------------------------------------------------------------------------- state in and out

    def validate(self, final=False):
        """The validation loss, or None if a signal or --max-time stopped the evaluation (a periodic one is then
        pending: a resumed run completes it before its first step); keeps best.h5 and the early-stop count."""
        state, valset = self.state, self.valset
        scoring = Scoring(valset, state.step, self.emit)
        val = scoring.score(self.backend, self.model, self.eval_plan, self.comm, self.eval_stop)
        self.eval_seconds += scoring.seconds
        if scoring.seconds_per_batch is not None:
            self.budget.measured("eval_batch", scoring.seconds_per_batch)
        if val is None:
            self.eval_stopped_by, state.eval_pending = scoring.stopped_by, not final
            why = "a signal" if scoring.stopped_by == "signal" else "--max-time"
            self.emit("message", {"text": f"the evaluation at step {state.step:,} was stopped by {why} after "
                                          f"{scoring.done:,} of {valset.batches:,} minibatches; " +
                                          ("no val loss for the last step" if final else "a resumed run completes it")})
            return None
        self.last_eval = {"val_tokens": valset.tokens, "eval_seconds": scoring.seconds}
        if val < state.best_val:
            state.best_val, state.best_step, state.evals_since_best = val, state.step, 0
            self.save(os.path.join(self.run_dir, ckpt_io.BEST_NAME))
        else:
            state.evals_since_best += 1
        self.emit("eval", {"step": state.step, "val_loss": val, "best_val": state.best_val,
                           "val_tokens": valset.tokens, "seconds": scoring.seconds})
        return val

    def val_fields(self, val):
        """The fields of a log row with a val loss: the loss, the val tokens it was computed on, the seconds."""
        return {"val_loss": val, "val_tokens": self.last_eval["val_tokens"],
                "eval_seconds": round(self.last_eval["eval_seconds"], 4)}

    def eval_stop(self):
        """Why a running evaluation stops before its next minibatch: "signal", "max_time" (only the final
        checkpoint's time is left), the same on every rank; None: it goes on."""
        self.stop.check()  # a second signal swallowed by a finalizer
        signum, late = self.stop.signum, self.budget.past_deadline()
        if self.comm.size > 1:
            signum, late = self.comm.agree([signum or 0, late])
            signum = self.signum = int(signum) or None
        return "signal" if signum is not None else "max_time" if late else None

    def complete_pending_eval(self):
        """The evaluation of the checkpoint's step that a signal or --max-time stopped, before the next step, as
        the run would have done uninterrupted: its log row gains the val loss. Returns (a stop reason or None,
        the val loss or None)."""
        state, config = self.state, self.config
        val = self.validate() if self.valset is not None else None
        if val is None and self.valset is not None:
            return self.eval_stopped_by, None
        state.eval_pending = False
        if state.pending_row and val is not None:
            self.log.truncate_after(state.step - 1)
            self.last_row = dict(state.pending_row, **self.val_fields(val))
            self.log.write(self.last_row)
        state.pending_row = {}
        if config.early_stop_patience and val is not None and state.evals_since_best >= config.early_stop_patience:
            return "early_stop", val
        return None, val

    def keep_eval_tokens(self):
        """The val tokens the run's evaluations scored so far, recorded in its state (validation.keep_tokens)."""
        if self.valset is not None:
            state, mode = self.state, str(self.config.eval_tokens)
            change = keep_tokens(self.valset, mode, state.eval_tokens, state.eval_batches)
            if change:
                self.emit("message", {"text": change})
            state.eval_tokens, state.eval_batches = mode, self.valset.batches

    def save(self, path=None):
        """A checkpoint of everything a resumed run needs (RUN_DIR/checkpoint.h5 unless `path`), with whether
        the run is healthy now. Parameters, optimizer buffers or carried state that are not finite are never
        written (raises _NonFinite)."""
        path, comm = path or self.ckpt_path, self.comm
        arrays = {"parameters": self.model.flat, "carried hidden state": self.h}
        arrays.update({f"optimizer buffer {name}": buf for name, buf in self.optimizer.state.items()})
        bad = [name for name, a in arrays.items() if not np.all(np.isfinite(a))]
        if comm.size > 1 and comm.agree([bool(bad)])[0] and not bad:  # another rank's carried state
            bad = ["carried hidden state"]
        if bad:
            raise _NonFinite(f"the {', '.join(bad)} became non-finite by step {self.state.step}; that checkpoint "
                             f"was not written")
        hidden = self.h
        if comm.size > 1:  # the checkpoint holds all N streams, whatever the number of ranks
            comm.check_same("the parameters (a checksum)", digest([self.model.flat]))
            hidden = comm.gather_rows(self.h, self.config.batch_size)
            if not comm.is_root:
                return
        started = time.perf_counter()
        if hasattr(self, "wall_at_start"):
            self.state.wall_seconds = self.wall_at_start + (started - self.started)
        self.state.rng = self.rng.bit_generator.state
        healthy = self.is_healthy()
        state = dataclasses.replace(self.state, healthy=healthy, warmup=self.warmup)
        if path == self.ckpt_path and not healthy and self.ckpt_healthy and os.path.exists(path):
            ckpt_io.keep_last_good(self.run_dir)
        ckpt_io.save(path, ckpt_io.Checkpoint(
            config=self.config.to_dict(), vocab=self.vocab.to_dict(), params=self.model.flat,
            optimizer=self.optimizer.state, hidden=hidden, state=state))
        if path == self.ckpt_path:
            self.ckpt_healthy = healthy
            last_good = os.path.join(self.run_dir, ckpt_io.LAST_GOOD_NAME)
            if healthy and os.path.exists(last_good):
                try:
                    os.unlink(last_good)  # older than this healthy checkpoint
                except OSError:
                    pass
        if path == self.ckpt_path and self.config.keep_checkpoints > 1:
            ckpt_io.keep_history(self.run_dir, self.state.step, self.config.keep_checkpoints)
        if hasattr(self, "budget"):
            self.budget.measured("checkpoint", time.perf_counter() - started)
        self.emit("checkpoint", {"step": self.state.step, "path": path})

    def is_healthy(self):
        """The run is healthy: its smoothed loss is finite and within HEALTHY_RISE of its lowest so far, and the
        loss of the last steps within RECENT_RISE of it (a checkpoint written while the loss climbs is not a
        point to roll back to)."""
        state = self.state
        if math.isnan(state.smooth_loss):
            return True  # no step yet: the initial parameters
        if not (math.isfinite(state.smooth_loss) and math.isfinite(state.low_loss)):
            return False
        recent = state.smooth_loss if math.isnan(state.recent_loss) else state.recent_loss  # older checkpoints
        return state.smooth_loss <= HEALTHY_RISE * state.low_loss and recent <= RECENT_RISE * state.low_loss

    def restore(self, ckpt):
        """Everything a checkpoint holds back into the run: parameters, optimizer buffers and step count, the
        counters (RunState), the random generator and the carried state. Used by --resume and by rollback."""
        self.model.load_flat(ckpt.params)
        for name, buf in self.optimizer.state.items():
            buf[...] = ckpt.optimizer[name]
        self.state = copy.deepcopy(ckpt.state)
        self.optimizer.t = self.state.step
        self.rng.bit_generator.state = self.state.rng
        lo, hi = self.rows
        self.h = ckpt.hidden[lo:hi].astype(self.model.dtype, copy=True)  # this rank's streams


class _NonFinite(Exception):
    """Inside the loop: the state is not finite, so no checkpoint was written (a divergence problem)."""


def _check_resumable(saved, config, vocab, train_tokens, corpus_path):
    """The checkpoint fits this corpus and configuration (else CheckpointError)."""
    if Vocab.from_dict(saved.vocab) != vocab:
        raise CheckpointError(f"the checkpoint's vocabulary ({len(saved.vocab.get('symbols', []))} "
                              f"symbols) does not match the corpus {corpus_path} ({vocab.size} symbols)")
    if saved.params.size != Layout(model_shapes(config.model, vocab.size, config.hidden_size,
                                                config.num_layers)).size:
        raise CheckpointError(f"the checkpoint's parameters ({saved.params.size} values) do not fit its "
                              f"configuration ({config.model}, {config.num_layers} layers, hidden "
                              f"{config.hidden_size}); it is damaged or from another program")
    if saved.state.train_tokens != len(train_tokens):
        raise CheckpointError(f"the corpus {corpus_path} is not the one this run was trained on "
                              f"(train split {len(train_tokens)} tokens, the run had "
                              f"{saved.state.train_tokens})")


def saved_step(path):
    try:
        return ckpt_io.load(path).state.step
    except CheckpointError:
        return "?"


def _eta(steps_left, seconds_per_step, seconds_left):
    """Seconds left, from the step limit and the time limit (budget.TimeBudget.left), whichever comes first
    (None if unbounded)."""
    left = []
    if steps_left != math.inf and seconds_per_step:
        left.append(steps_left * seconds_per_step)
    if seconds_left is not None:
        left.append(max(0.0, seconds_left))
    return min(left) if left else None
