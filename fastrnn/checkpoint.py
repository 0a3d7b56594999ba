"""Checkpoints: everything a run needs to continue exactly, in one HDF5 file written atomically.

Layout of checkpoint.h5:

    attrs  fastrnn_checkpoint = 1, format_version, config (JSON), vocab (JSON), state (JSON: step, epoch, index,
           rng state, smoothed loss, best val loss, ...), checksum (sha256 of all of the above and every dataset)
    params              (P,)    the flat parameter buffer (fastrnn.params layout)
    optimizer/<name>    (P,)    optimizer state buffers, same layout
    hidden              (N, H)  the carried hidden state

A file is written to a temporary name in the same directory, flushed and fsynced, then renamed over the old one,
so a crash at any instant leaves either the old or the new checkpoint, never a mixture. The checksum detects a
file damaged afterwards.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile

import h5py
import numpy as np

from fastrnn.errors import CheckpointError

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.h5"
BEST_NAME = "best.h5"
HISTORY_PATTERN = re.compile(r"^checkpoint-(\d+)\.h5$")


class Checkpoint:
    """The contents of a checkpoint file."""

    def __init__(self, config, vocab, params, optimizer, hidden, state, path=None):
        self.config = config  # dict
        self.vocab = vocab  # dict (fastrnn.corpus.Vocab.to_dict())
        self.params = params  # (P,)
        self.optimizer = optimizer  # dict name -> (P,)
        self.hidden = hidden  # (N, H)
        self.state = state  # dict
        self.path = path


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
    """Write `ckpt` to `path` atomically (temp file, flush, fsync, rename, fsync of the directory)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    attrs_json = {
        "config": json.dumps(ckpt.config, sort_keys=True),
        "vocab": json.dumps(ckpt.vocab, sort_keys=True),
        "state": json.dumps(ckpt.state, sort_keys=True),
    }
    arrays = {"params": ckpt.params, "hidden": ckpt.hidden}
    arrays.update({f"optimizer/{k}": v for k, v in ckpt.optimizer.items()})
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
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
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
    if not h5py.is_hdf5(path):
        raise CheckpointError(f"{path} is not a fastrnn checkpoint (not an HDF5 file)")
    try:
        with h5py.File(path, "r") as f:
            if "fastrnn_checkpoint" not in f.attrs:
                if "fastrnn_corpus" in f.attrs:
                    raise CheckpointError(f"{path} is a fastrnn corpus file, not a checkpoint")
                raise CheckpointError(f"{path} is not a fastrnn checkpoint")
            version = int(f.attrs["format_version"])
            if version > FORMAT_VERSION:
                raise CheckpointError(f"{path} has checkpoint format {version}; this fastrnn reads up to "
                                      f"{FORMAT_VERSION} (upgrade fastrnn)")
            attrs_json = {key: _as_str(f.attrs[key]) for key in ("config", "vocab", "state")}
            arrays = {"params": f["params"][()], "hidden": f["hidden"][()]}
            for key in f["optimizer"]:
                arrays[f"optimizer/{key}"] = f["optimizer"][key][()]
            checksum = _as_str(f.attrs["checksum"])
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} is damaged or truncated ({exc})") from exc
    if _digest(attrs_json, arrays) != checksum:
        raise CheckpointError(f"{path} is corrupt: checksum mismatch")
    optimizer = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("optimizer/")}
    return Checkpoint(
        config=json.loads(attrs_json["config"]),
        vocab=json.loads(attrs_json["vocab"]),
        params=arrays["params"],
        optimizer=optimizer,
        hidden=arrays["hidden"],
        state=json.loads(attrs_json["state"]),
        path=path,
    )


def _as_str(value):
    return value.decode() if isinstance(value, bytes) else str(value)


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
    src = os.path.join(run_dir, CHECKPOINT_NAME)
    dst = os.path.join(run_dir, f"checkpoint-{step:08d}.h5")
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
    for _, path in history(run_dir)[keep:]:
        try:
            os.unlink(path)
        except OSError:
            pass


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
            return ckpt, f"{exc}; resuming from {candidate} (step {ckpt.state.get('step')}) instead"
        raise
