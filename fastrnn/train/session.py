"""A session of `fastrnn train`: the run directory locked, what it holds read (a run to resume, a checkpoint to
fine-tune from), the configuration resolved, then the Run (fastrnn.train.run) set up and its loop run."""

import contextlib
import dataclasses
import os
import time

from fastrnn import checkpoint as ckpt_io
from fastrnn import choose, rundir
from fastrnn.config import DEFAULT_LR, RESUME_CHANGEABLE, RESUME_CHANGEABLE_WITH_ALLOW, TrainConfig
from fastrnn.corpus import open_corpus
from fastrnn.distributed import SINGLE
from fastrnn.errors import CheckpointError, ConfigError, FastrnnError
from fastrnn.train.run import Run

DEFAULT_MAX_EPOCHS = 10.0  # used when no --max-steps/--max-epochs/--max-time is given
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
        if comm.is_root:  # the model chosen for --max-time, a cosine schedule's last step (fastrnn.choose)
            config = choose.settle(config, overrides or {}, corpus_path, saved.state if saved else None,
                                   parent is not None, comm.size, started, emit)
    except FastrnnError as exc:
        failure = exc
    comm.first_error(failure)  # rank 0 read the run directory; every rank gets what it found
    saved, parent, config = comm.bcast((saved, parent, config))
    with contextlib.ExitStack() as opened:
        try:
            corpus = opened.enter_context(open_corpus(corpus_path))
            run = Run(config, corpus, corpus_path, run_dir, saved, emit, parent, comm, started)
        except FastrnnError as exc:
            failure = exc
        saved = parent = None  # the run holds copies of their arrays: not twice the model's state while it trains
        comm.first_error(failure)  # a rank that cannot start stops them all, with its reason
        try:
            return run.loop()
        finally:
            run.close()


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
