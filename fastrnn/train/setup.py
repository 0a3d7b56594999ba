"""What a session of a run sets up (`Setup`: data, model, optimizer, counters, kernel plans, the start event and
the log) and the run's state in and out of its checkpoints (save, restore). `fastrnn.train.run.Run` is a Setup
that runs the training loop."""

import contextlib
import copy
import dataclasses
import math
import os
import time
import uuid

import numpy as np

from fastrnn import checkpoint as ckpt_io
from fastrnn import choose, horizon, rundir
from fastrnn.checkpoint import RunState
from fastrnn.corpus import BatchStream, Vocab
from fastrnn.distributed import SINGLE, DataParallel
from fastrnn.errors import CheckpointError, ConfigError
from fastrnn.model import Model, get_backend
from fastrnn.optim import Optimizer
from fastrnn.train import health
from fastrnn.train.evaluation import Evaluations
from fastrnn.train.runlog import LOG_NAME, open_log
from fastrnn.validation import val_set

WARMUP_CHARS = 100  # characters of real text an unprimed sample is warmed on


def _on(threads, ranks):
    """'2 threads', or '1 thread on 2 ranks': what a session's kernel plans were made for."""
    where = f" on {ranks} ranks" if ranks != 1 else ""
    return f"{threads} thread{'s' if threads != 1 else ''}{where}"


class Setup:
    """One session of a run, set up: the model, optimizer, data and counters, the plans, the log."""

    def __init__(self, config, corpus, corpus_path, run_dir, saved, emit, parent=None, comm=SINGLE, started=None):
        """saved: the checkpoint a resumed run continues from, parent: the one a fine-tuned run starts from (or
        None). started: the session's start on time.perf_counter (--max-time counts from it); None: now. The
        session runs on its threads (the backend's `threads`) and holds its log open until close()."""
        self.config, self.corpus, self.run_dir, self.emit, self.comm = config, corpus, run_dir, emit, comm
        self.started = time.perf_counter() if started is None else started
        self.ckpt_path = os.path.join(run_dir, ckpt_io.CHECKPOINT_NAME)
        self.vocab, self.corpus_path = corpus.vocab, corpus_path
        self.budget = self.wall_at_start = None  # set when the loop starts
        self.held = contextlib.ExitStack()  # the threads, then the log
        try:
            self.open_data(saved, parent)
            self.build(saved, parent)
            self.announce(saved)
        except BaseException:
            self.held.close()
            raise

    def open_data(self, saved, parent):
        """This rank's block of the training streams, the validation set, the text unprimed samples are warmed on;
        a resumed or fine-tuned run must fit the corpus."""
        config, corpus = self.config, self.corpus
        self.train_tokens = corpus.split("train")
        self.comm.check_data(corpus, config.batch_size)  # every rank reads the same corpus, and has streams
        self.dp = DataParallel(self.comm, config.batch_size)
        self.rows = self.dp.rows  # (lo, hi): this rank's block of the N streams
        self.stream = BatchStream(self.train_tokens, config.batch_size, config.seq_len, name="train",
                                  shuffle=config.shuffle, seed=config.seed, check=corpus.checker("train"),
                                  rows=self.dp.stream_rows)
        self.valset = val_set(corpus.split("val"), config, corpus.checker("val"), self.comm)
        self.val_stream = None if self.valset is None else self.valset.stream
        # unprimed samples start from a state warmed on real text (the start of the val split, else of train), not
        # from a zero state fed a newline, which training never sees; kept in every checkpoint for `fastrnn sample`
        warm = "val" if len(corpus.split("val")) >= 2 else "train"
        self.warmup = corpus.read(warm, 0, WARMUP_CHARS).tolist()
        if self.val_stream is None and config.early_stop_patience:
            raise ConfigError("--early-stop-patience needs a validation split of at least seq_len + 1 tokens "
                              "(prepare the corpus with --val-frac > 0)")
        if saved is not None:
            self.fits(saved)
        if parent is not None and Vocab.from_dict(parent.vocab) != self.vocab:
            theirs = Vocab.from_dict(parent.vocab)
            raise CheckpointError(f"the vocabulary of {self.corpus_path} ({self.vocab.size} symbols) is not the one "
                                  f"of {parent.path} ({theirs.size} symbols); prepare the corpus with --vocab-from "
                                  f"{parent.path}")

    def build(self, saved, parent):
        """The run directory, the threads, the model, optimizer and gradients, the counters (of a new, fine-tuned or
        resumed run) and the kernel plans."""
        config, comm = self.config, self.comm
        if comm.is_root:
            rundir.prepare(self.run_dir)
        self.backend = get_backend(config.backend)
        # several ranks on one machine share its cores (never oversubscribed unless --threads says so)
        self.threads = self.held.enter_context(self.backend.threads(config.threads or comm.default_threads()))
        self.model = Model(self.vocab.size, config.hidden_size, config.dtype, config.model, config.num_layers)
        self.optimizer = Optimizer(config, self.model.layout, self.model.dtype, self.backend)
        self.gflat = self.dp.gradients(self.model.layout.size, self.model.dtype)  # (P,), the parameters' layout
        self.G = self.model.layout.views(self.gflat)
        self.rng = np.random.default_rng(config.seed)
        if saved is None:
            self.model.init(self.rng, config.init_scale, config.init)
            self.state = RunState(train_tokens=len(self.train_tokens), vocab_size=self.vocab.size,
                                  run_id=comm.bcast(uuid.uuid4().hex[:16]), corpus=os.path.abspath(self.corpus_path))
            if parent is not None:  # the same draws as a run from scratch were made: the rest of the run's
                self.model.load_flat(parent.params.astype(self.model.dtype))  # random numbers do not depend on it
                self.state.init_from = f"{os.path.abspath(parent.path)} at step {parent.state.step}"
            self.h = self.model.zero_state(self.rows[1] - self.rows[0])  # (N, S): this rank's streams
        else:
            self.restore(saved)
        self.evals = Evaluations(self.valset, self.backend, self.dp, self.emit)
        self.evals.keep_tokens(self.state, config.eval_tokens)
        # a run from before run ids gets one now; its checkpoints and rows without an id are its own
        self.legacy_id = not self.state.run_id
        if self.legacy_id:
            self.state.run_id = comm.bcast(uuid.uuid4().hex[:16])
        self.state.ranks = comm.size
        # whether checkpoint.h5 on disk is healthy (then it is kept as last-good.h5 before an unhealthy one)
        self.ckpt_healthy = saved is not None and saved.path == self.ckpt_path and ckpt_io.is_healthy(saved)
        self.make_plans(self.state.plans if saved is not None else [])  # (state.plans: the saved session's)

    def make_plans(self, recorded):
        """The kernel paths of the training step and of evaluation, decided once for the session
        (kernels.dispatch); `self.ways` names them for its checkpoints (RunState.plans, gathered from the ranks by
        save). `recorded`: the plans of the session a resumed run continues. On as many ranks and the same
        threads, each rank takes its own by name: choosing again could choose another (a measured plan where the
        rule decided on a busy machine, say), and the numbers would no longer be those of a run that never
        stopped. Otherwise they are chosen anew, and a message says so (the reference backend has one way:
        nothing to say)."""
        config, comm, P, T = self.config, self.comm, self.model.P, self.config.seq_len
        mine = recorded[comm.rank] if len(recorded) == comm.size and isinstance(recorded[comm.rank], dict) else {}
        same = bool(mine) and mine.get("threads") == self.threads

        def plan(rows, dropout, way):
            try:
                return self.backend.plan_for(P, rows, T, dropout, self.threads, config.precision, way or None)
            except ValueError:  # not a way this shape can run (a damaged record): chosen anew
                return self.backend.plan_for(P, rows, T, dropout, self.threads, config.precision)

        val_rows = None if self.val_stream is None else comm.rows(self.val_stream.batch_size)

        def both():  # (measured, where the machine has not measured these shapes yet, one rank at a time)
            return (plan(self.rows[1] - self.rows[0], config.dropout > 0, mine.get("train") if same else None),
                    None if val_rows is None or val_rows[1] == val_rows[0] else
                    plan(val_rows[1] - val_rows[0], False, mine.get("eval") if same else None))
        self.plan, self.evals.plan = comm.in_turns(both)
        self.ways = ways = {"train": self.plan.way, "eval": self.evals.plan.way if self.evals.plan else "",
                            "threads": self.threads}
        if recorded and self.plan.way != "reference" and (not same or {k: mine.get(k) for k in ways} != ways):
            was = recorded[0] if isinstance(recorded[0], dict) else {}
            self.emit("message", {"text": f"kernel plan chosen anew for {_on(self.threads, comm.size)}: the "
                                          f"checkpoint's ({was.get('train')}) " + ("does not fit this shape" if same
                                          else f"was made for {_on(was.get('threads'), len(recorded))}")})

    def announce(self, saved):
        """The step limit, the 'start' event, then the run log (last, so that nothing in here can fail with the
        file open; a new run's first write, so an old run (--force) goes first: nothing of it is lost before)."""
        config, valset, state = self.config, self.valset, self.state
        self.spe = self.stream.steps_per_epoch
        self.max_steps = config.max_steps or math.inf
        if config.max_epochs:
            self.max_steps = min(self.max_steps, math.ceil(config.max_epochs * self.spe))
        self.total_steps = None if self.max_steps == math.inf else self.max_steps
        self.lr_steps = self.total_steps or config.extra.get(choose.HORIZON_KEY)  # where a cosine schedule ends
        self.horizon_check = horizon.HorizonCheck(config, self.lr_steps) \
            if horizon.HorizonCheck.wanted(config, self.total_steps, self.comm.size) else None
        self.emit("start", {"config": config.to_dict(), "model": self.model.describe(), "steps_per_epoch": self.spe,
                            "train_tokens": len(self.train_tokens),
                            "val_streams": self.val_stream.batch_size if self.val_stream else 0,
                            "threads": self.threads, "val_tokens": valset.tokens if valset else 0,
                            "validation": valset.describe() if valset else None, "plan": self.plan.describe(),
                            "resumed_from": state.step if saved else None, "run_id": state.run_id,
                            "init_from": state.init_from or None, "ranks": self.comm.size,
                            "max_steps": self.total_steps})
        if saved is None and self.comm.is_root:
            rundir.discard_run(self.run_dir)
        self.log = open_log(self.run_dir, state.run_id, None if saved is None else state.step, self.legacy_id,
                            self.comm.is_root)
        self.held.callback(self.log.close)
        if self.log.foreign:
            self.emit("message", {"text": f"warning: dropped {self.log.foreign} row(s) of {LOG_NAME} that are not "
                                          f"this run's (another run id)"})
        if config.precision == "bf16" and self.plan.precision != "bf16":
            why = self.plan.refused or "the plan has no bf16 path"
            self.emit("message", {"text": f"--precision bf16: {why}; training in float32"})

    def step_timed(self, seconds, now):
        """A training step took `seconds` and ended at `now` (not the first, which compiles): the budget's cost of
        a step, and the check of a cosine schedule's horizon (horizon.HorizonCheck), recorded in the config the
        checkpoints keep."""
        self.budget.measured("step", seconds)
        checked = self.horizon_check and self.horizon_check.observe(self.state.step, now, self.budget.left())
        if checked:
            self.horizon_check, (self.lr_steps, line) = None, checked
            self.config.extra = dict(self.config.extra, **{choose.HORIZON_KEY: self.lr_steps, choose.CHECKED_KEY: True})
            if line:
                self.emit("message", {"text": line})

    def close(self):
        """The log closed, the threads as they were before the session."""
        self.held.close()

    def save(self, path=None):
        """A checkpoint of everything a resumed run needs (RUN_DIR/checkpoint.h5 unless `path`), with whether
        the run is healthy now. Parameters, optimizer buffers or carried state that are not finite are never
        written (raises health.NonFinite)."""
        path = path or self.ckpt_path
        arrays = {"parameters": self.model.flat, "carried hidden state": self.h}
        arrays.update({f"optimizer buffer {name}": buf for name, buf in self.optimizer.state.items()})
        bad = [name for name, a in arrays.items() if not np.all(np.isfinite(a))]
        if self.dp.any(bad) and not bad:  # another rank's carried state
            bad = ["carried hidden state"]
        if bad:
            raise health.NonFinite(f"the {', '.join(bad)} became non-finite by step {self.state.step}; that "
                                   f"checkpoint was not written")
        hidden = self.dp.gather_state(self.model.flat, self.h)  # the checkpoint holds all N streams
        self.state.plans = self.comm.allgather(self.ways)  # and every rank's kernel plans
        if not self.comm.is_root:
            return
        started = time.perf_counter()
        if self.wall_at_start is not None:
            self.state.wall_seconds = self.wall_at_start + (started - self.started)
        self.state.rng = self.rng.bit_generator.state
        healthy = health.is_healthy(self.state)
        ckpt = ckpt_io.Checkpoint(config=self.config.to_dict(), vocab=self.vocab.to_dict(), params=self.model.flat,
                                  optimizer=self.optimizer.state, hidden=hidden,
                                  state=dataclasses.replace(self.state, healthy=healthy, warmup=self.warmup))
        if path == self.ckpt_path:
            ckpt_io.save_in_run(self.run_dir, ckpt, self.ckpt_healthy, self.config.keep_checkpoints)
            self.ckpt_healthy = healthy
        else:
            ckpt_io.save(path, ckpt)
        if self.budget is not None:
            seconds = time.perf_counter() - started
            self.budget.measured("checkpoint", seconds)
            self.phases.setdefault("checkpoint_seconds", []).append(round(seconds, 4))
        self.emit("checkpoint", {"step": self.state.step, "path": path})

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

    def fits(self, ckpt):
        """The checkpoint fits this corpus and configuration (else CheckpointError)."""
        health.check_resumable(ckpt, self.config, self.vocab, self.train_tokens, self.corpus_path)
