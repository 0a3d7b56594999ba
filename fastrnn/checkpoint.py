"""Checkpoints: everything a run needs to continue exactly, in one HDF5 file written atomically.

Layout of checkpoint.h5:

    attrs  fastrnn_checkpoint = 1, format_version, config (JSON), vocab (JSON), state (JSON: the fields of
           RunState: step, epoch, index, rng state, smoothed loss, best val loss, run_id, healthy, ...), checksum
           (sha256 of all of the above and every dataset)
    params              (P,)    the flat parameter buffer (fastrnn.params layout)
    optimizer/<name>    (P,)    optimizer state buffers, same layout
    hidden              (N, H)  the carried hidden state

A file is written to a temporary name in the same directory, flushed and fsynced, then renamed over the old one,
so a crash at any instant leaves either the old or the new checkpoint, never a mixture. The checksum detects a
file damaged afterwards.
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile

import h5py
import numpy as np

from fastrnn.errors import CheckpointError
from fastrnn.guards import Deferred
from fastrnn.h5safe import check_global_heaps, dataset_extent, int_attr, str_attr

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.h5"
BEST_NAME = "best.h5"
LAST_GOOD_NAME = "last-good.h5"  # the last healthy checkpoint.h5, kept while the run is not healthy
HISTORY_PATTERN = re.compile(r"^checkpoint-(\d+)\.h5$")
# what reading a damaged HDF5 file, its attributes or their JSON can raise (UnicodeError is a ValueError)
_DAMAGE = (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError, ArithmeticError,
           MemoryError)


def _kept(default):
    """A field a divergence rollback keeps from the run that rolls back (the others come back from the checkpoint
    it rolls back to)."""
    return dataclasses.field(default=default, metadata={"rollback": "kept"})


@dataclasses.dataclass
class RunState:
    """The state of a checkpoint: everything besides parameters, optimizer buffers and carried state that a resumed
    run needs to continue exactly, with how it stood when the checkpoint was written (`healthy`, `warmup`).

    This is the checkpoint's schema: it is written as the `state` attribute (JSON, every field), and read back with
    the defaults below for what an older checkpoint lacks (fields it does not know are dropped). A divergence
    rollback restores every field from the checkpoint it rolls back to, except those declared kept (`_kept`: the
    run's clocks, its learning-rate scale, its rollback count and its id: see `keep_on_rollback`)."""

    step: int = 0  # updates done
    epoch: int = 0  # position of the next minibatch: (epoch, index within the epoch)
    index: int = 0
    smooth_loss: float = float("nan")
    first_loss: float = float("nan")
    best_val: float = float("inf")
    best_step: int = -1
    evals_since_best: int = 0
    elapsed: float = _kept(0.0)  # seconds of training so far, over all sessions of the run
    wall_seconds: float = _kept(0.0)  # the run's wall clock over its sessions, each from train()'s start to its
    # last checkpoint: start-up, evaluations and checkpoints included (--max-time counts it)
    rng: dict = dataclasses.field(default_factory=dict)  # numpy bit generator state
    train_tokens: int = 0  # the corpus the run was trained on (checked on resume)
    vocab_size: int = 0
    lr_scale: float = _kept(1.0)  # halved by each divergence rollback
    rollbacks: int = _kept(0)
    run_id: str = _kept("")  # made when the run starts; in every checkpoint and log row of the run ("" before
    # fastrnn had it)
    low_loss: float = float("nan")  # the lowest smoothed loss so far (a checkpoint's health is judged against it)
    recent_loss: float = float("nan")  # a faster moving average of the loss, for the health
    stuck_steps: int = 0  # steps in a row with the smoothed loss far above low_loss
    corpus: str = ""  # the corpus file the run was started on (absolute path)
    init_from: str = ""  # the checkpoint a fine-tuning run (--init-from) took its parameters from, and its step
    ranks: int = 1  # the MPI ranks of the session that wrote the checkpoint (data-parallel training)
    plans: list = dataclasses.field(default_factory=list)  # the kernel plans of the session that wrote the
    # checkpoint, one {"train": way, "eval": way or "", "threads": n} a rank (Plan.way): a resumed session on as many
    # ranks and the same threads takes them instead of choosing again
    eval_tokens: str = ""  # the --eval-tokens the run's evaluations were sized with, and their minibatches: a
    eval_batches: int = 0  # resumed run scores the same val tokens (also with another --eval-every)
    eval_pending: bool = False  # the evaluation of this step was stopped (a signal, --max-time): resuming runs it,
    pending_row: dict = dataclasses.field(default_factory=dict)  # and completes this log row with its val loss
    healthy: bool = True  # written while the run was healthy (absent in older checkpoints): a rollback target
    warmup: list = None  # the token ids an unprimed sample is warmed on (the start of the val split)

    @classmethod
    def from_dict(cls, values):
        return cls(**{k: v for k, v in values.items() if k in STATE_FIELDS})

    def to_dict(self):
        """JSON-safe: numpy scalars as Python numbers (infinities and NaN as JSON's Infinity and NaN)."""
        return _jsonable(dataclasses.asdict(self))

    def keep_on_rollback(self, run):
        """After a rollback restored this state from a checkpoint: take back from `run` (the state before) the
        fields a rollback keeps."""
        for f in dataclasses.fields(self):
            if f.metadata.get("rollback") == "kept":
                setattr(self, f.name, getattr(run, f.name))

    def __getitem__(self, name):
        """state["step"]: access by field name, for scripts written when the state was a dict (the package uses
        the attributes)."""
        if name not in STATE_FIELDS:
            raise KeyError(name)
        return getattr(self, name)

    def __setitem__(self, name, value):
        if name not in STATE_FIELDS:
            raise KeyError(name)
        setattr(self, name, value)

    def __delitem__(self, name):
        """The field back to its default: as a checkpoint without it (an older one) reads."""
        if name not in STATE_FIELDS:
            raise KeyError(name)
        f = next(f for f in dataclasses.fields(self) if f.name == name)
        setattr(self, name, f.default_factory() if f.default is dataclasses.MISSING else f.default)

    def get(self, name, default=None):
        return getattr(self, name) if name in STATE_FIELDS else default


STATE_FIELDS = frozenset(f.name for f in dataclasses.fields(RunState))
KEPT_ON_ROLLBACK = tuple(f.name for f in dataclasses.fields(RunState) if f.metadata.get("rollback") == "kept")


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


@dataclasses.dataclass(eq=False)
class Checkpoint:
    """The contents of a checkpoint file."""

    config: dict  # fastrnn.config.TrainConfig.to_dict()
    vocab: dict  # fastrnn.corpus.Vocab.to_dict()
    params: np.ndarray  # (P,)
    optimizer: dict  # name -> (P,)
    hidden: np.ndarray  # (N, S)
    state: RunState  # (a dict is read as RunState.from_dict)
    path: str = None

    def __post_init__(self):
        if not isinstance(self.state, RunState):
            self.state = RunState.from_dict(self.state)


def resolve(path):
    """A checkpoint file, or a run directory holding checkpoint.h5."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return os.path.join(path, CHECKPOINT_NAME)
    return path


def _digest(attrs_json, arrays):
    h = hashlib.sha256()
    for key in sorted(attrs_json):
        h.update(key.encode())
        h.update(attrs_json[key].encode())
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def remove_stale_temps(directory):
    """Delete temporary checkpoint files left by a process killed while writing one (the rename never came)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith(".checkpoint-") and name.endswith(".h5.tmp"):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


def save(path, ckpt):
    """Write `ckpt` to `path` atomically (temp file, flush, fsync, rename, fsync of the directory). A checkpoint
    whose parameters or optimizer state are not finite is never written (CheckpointError)."""
    path = os.fspath(path)
    if not is_finite(ckpt):
        raise CheckpointError(f"not writing {path}: its parameters or optimizer state are not finite (NaN/inf)")
    directory = os.path.dirname(os.path.abspath(path))
    attrs_json = {
        "config": json.dumps(ckpt.config, sort_keys=True),
        "vocab": json.dumps(ckpt.vocab, sort_keys=True),
        "state": json.dumps(ckpt.state.to_dict(), sort_keys=True),
    }
    arrays = {"params": ckpt.params, "hidden": ckpt.hidden}
    arrays.update({f"optimizer/{k}": v for k, v in ckpt.optimizer.items()})
    # Ctrl-C and SIGTERM wait until the file is written (milliseconds): a second signal then stops the run after the
    # checkpoint, never inside HDF5 (which would leave a half-closed file for the interpreter's shutdown)
    # (a mask would not do: the signal goes to whichever thread, a BLAS worker say, and Python runs its handler in
    # the main thread anyway; the handlers are swapped for ones that note the signal, replayed after the write)
    with Deferred():
        _write(path, directory, attrs_json, arrays)


def _write(path, directory, attrs_json, arrays):
    try:
        fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".h5.tmp", dir=directory)
    except OSError as exc:  # the directory is read-only, full, or gone (deleted while the run went on)
        raise CheckpointError(f"cannot write checkpoint {path}: {_write_failure(exc, directory)}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            with h5py.File(fh, "w") as f:
                f.attrs["fastrnn_checkpoint"] = 1
                f.attrs["format_version"] = FORMAT_VERSION
                for key, value in attrs_json.items():
                    f.attrs[key] = value
                f.attrs["checksum"] = _digest(attrs_json, arrays)
                for key, value in arrays.items():
                    f.create_dataset(key, data=value)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise CheckpointError(f"cannot write checkpoint {path}: {_write_failure(exc, directory)}") from exc
        raise
    fsync_dir(directory)


def fsync_dir(path):
    """Make the renames and creations in directory `path` durable (best effort: not every filesystem can)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _write_failure(exc, directory):
    if not os.path.isdir(directory):
        return f"the directory {directory} no longer exists"
    return exc.strerror or exc


def load(path):
    """Read and verify a checkpoint (a file or a run directory). Raises CheckpointError with a clear reason."""
    path = resolve(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if not h5py.is_hdf5(path):
            raise CheckpointError(f"{path} is not a fastrnn checkpoint (not an HDF5 file)")
        with h5py.File(path, "r") as f:
            if "fastrnn_checkpoint" not in f.attrs:
                if "fastrnn_corpus" in f.attrs:
                    raise CheckpointError(f"{path} is a fastrnn corpus file, not a checkpoint")
                raise CheckpointError(f"{path} is not a fastrnn checkpoint")
            version = int_attr(f, "format_version")
            if version > FORMAT_VERSION:
                raise CheckpointError(f"{path} has checkpoint format {version}; this fastrnn reads up to "
                                      f"{FORMAT_VERSION} (upgrade fastrnn)")
            datasets = {"params": f["params"], "hidden": f["hidden"]}
            datasets.update({f"optimizer/{key}": f["optimizer"][key] for key in f["optimizer"]})
            _check_extents(path, datasets.values())
            attrs_json = {key: str_attr(f, key) for key in ("config", "vocab", "state")}
            arrays = {key: d[()] for key, d in datasets.items()}
            checksum = str_attr(f, "checksum")
        if _digest(attrs_json, arrays) != checksum:
            raise CheckpointError(f"{path} is corrupt: checksum mismatch")
        optimizer = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("optimizer/")}
        return Checkpoint(
            config=json.loads(attrs_json["config"]),
            vocab=json.loads(attrs_json["vocab"]),
            params=arrays["params"],
            optimizer=optimizer,
            hidden=arrays["hidden"],
            state=RunState.from_dict(json.loads(attrs_json["state"])),
            path=path,
        )
    except CheckpointError:
        raise
    except _DAMAGE as exc:
        raise CheckpointError(f"{path} is damaged or truncated ({type(exc).__name__}: {exc})") from None


def _check_extents(path, datasets):
    """Before any attribute or dataset is read: every dataset's raw data lies inside the file, and no global heap
    is damaged in a way HDF5 would never finish reading (fastrnn.h5safe). Raises ValueError."""
    size = os.path.getsize(path)
    check_global_heaps(path, [e for e in (dataset_extent(d, size) for d in datasets) if e[0] is not None])


def is_finite(ckpt):
    """Every parameter and optimizer value of the checkpoint is finite (no NaN/inf)."""
    return bool(np.all(np.isfinite(ckpt.params))) and all(bool(np.all(np.isfinite(v)))
                                                          for v in ckpt.optimizer.values())


def is_healthy(ckpt):
    """Written while its run was healthy (state "healthy", absent in older checkpoints) and finite: a point
    a divergence rollback may return to."""
    return bool(ckpt.state.healthy) and is_finite(ckpt)


def history(run_dir):
    """The numbered checkpoints kept by --keep-checkpoints: list of (step, path), newest first."""
    found = []
    for name in os.listdir(run_dir):
        m = HISTORY_PATTERN.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(run_dir, name)))
    return sorted(found, reverse=True)


def keep_history(run_dir, step, keep):
    """After checkpoint.h5 was written at `step`: keep it also as checkpoint-<step>.h5 (a hard link, or a copy
    where links are not supported) and delete numbered checkpoints beyond the newest `keep`."""
    dst = os.path.join(run_dir, f"checkpoint-{step:08d}.h5")
    _link_or_copy(os.path.join(run_dir, CHECKPOINT_NAME), dst)
    for _, path in history(run_dir)[keep:]:
        try:
            os.unlink(path)
        except OSError:
            pass


def save_in_run(run_dir, ckpt, was_healthy, keep):
    """Write `ckpt` as RUN_DIR/checkpoint.h5 with the files kept around it: a healthy checkpoint.h5 that an unhealthy
    one replaces is kept as last-good.h5 first (was_healthy: the one on disk is healthy), and removed once a healthy
    one is written again; with keep > 1, the numbered history of the newest `keep` (keep_history)."""
    path = os.path.join(run_dir, CHECKPOINT_NAME)
    if not ckpt.state.healthy and was_healthy and os.path.exists(path):
        keep_last_good(run_dir)
    save(path, ckpt)
    last_good = os.path.join(run_dir, LAST_GOOD_NAME)
    if ckpt.state.healthy and os.path.exists(last_good):
        try:
            os.unlink(last_good)  # older than this healthy checkpoint
        except OSError:
            pass
    if keep > 1:
        keep_history(run_dir, ckpt.state.step, keep)


def keep_last_good(run_dir):
    """Before a checkpoint of an unhealthy run replaces a healthy checkpoint.h5: keep that as last-good.h5."""
    _link_or_copy(os.path.join(run_dir, CHECKPOINT_NAME), os.path.join(run_dir, LAST_GOOD_NAME))


def _link_or_copy(src, dst):
    """`src` also as `dst`, atomically: a hard link (a copy where links are not supported) renamed over it."""
    tmp = dst + ".tmp"
    try:
        if os.path.exists(tmp):
            os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {dst}: {exc.strerror or exc}") from exc


def load_for_resume(run_dir):
    """The checkpoint to resume from: checkpoint.h5, or, if it is missing or damaged, the newest good numbered
    checkpoint. Returns (Checkpoint, warning or None)."""
    path = os.path.join(run_dir, CHECKPOINT_NAME)
    try:
        return load(path), None
    except CheckpointError as exc:
        if not os.path.isdir(run_dir):
            raise CheckpointError(f"nothing to resume: {run_dir} does not exist") from exc
        for _, candidate in history(run_dir):
            try:
                ckpt = load(candidate)
            except CheckpointError:
                continue
            return ckpt, f"{exc}; resuming from {candidate} (step {ckpt.state.step}) instead"
        raise
