import os
import signal
import tempfile

import numpy as np
import pytest

os.environ.setdefault("NUMBA_NUM_THREADS", "2")
# the kernels' measured choices (kernels.dispatch) go to a directory of this test session, not the user's cache
# (subprocesses inherit it, so every process of the session makes the same choices)
os.environ["FASTRNN_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastrnn-test-cache-")
# and the rule decides every plan (the same in every process of the session, whatever the machine's load):
# tests/test_dispatch.py measures for real where it checks the measurement, and each way is tested by name
os.environ.setdefault("FASTRNN_CALIBRATE", "0")

# A suite started in the background of a non-interactive shell (`make test &`, nohup in a script) inherits SIGINT
# ignored, and so would every process it starts: the tests of Ctrl-C would see no signal. The processes a user
# starts from a terminal have it, so the suite gives it back to them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

BUNDLED = os.path.join(os.path.dirname(__file__), "..", "fastrnn", "data", "tinyshakespeare.txt")


def make_text(n_chars, seed=0):
    """Deterministic text with learnable structure: words from a small lexicon, lines, punctuation."""
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "mat", "and", "a", "dog", "ran", "to", "it", "is", "was", "so", "big"]
    out, size = [], 0
    while size < n_chars:
        line = " ".join(rng.choice(words, size=rng.integers(3, 9))).capitalize() + ".\n"
        out.append(line)
        size += len(line)
    return "".join(out)[:n_chars]


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """A prepared corpus of 40k chars of simple text (train/val/test 90/5/5)."""
    from fastrnn.corpus import prepare

    d = tmp_path_factory.mktemp("corpus")
    src = d / "small.txt"
    src.write_text(make_text(40_000))
    out = d / "small.h5"
    prepare([str(src)], str(out))
    return str(out)


@pytest.fixture(scope="session")
def shakespeare_corpus(tmp_path_factory):
    """The bundled tiny Shakespeare, prepared."""
    from fastrnn.corpus import prepare

    out = tmp_path_factory.mktemp("shakespeare") / "tiny.h5"
    prepare([BUNDLED], str(out))
    return str(out)


def write_nonfinite_checkpoint(src, dst):
    """A copy of checkpoint `src` at `dst` with one parameter NaN and a valid checksum: fastrnn never writes such
    a file, but an older version could have (made by hand, past checkpoint.save's refusal)."""
    import shutil

    import h5py

    from fastrnn import checkpoint as ckpt_io

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        f["params"][3] = np.nan
        attrs = {key: f.attrs[key] for key in ("config", "vocab", "state")}
        arrays = {"params": f["params"][()], "hidden": f["hidden"][()]}
        arrays.update({f"optimizer/{k}": f["optimizer"][k][()] for k in f["optimizer"]})
        f.attrs["checksum"] = ckpt_io._digest({k: v.decode() if isinstance(v, bytes) else str(v)
                                               for k, v in attrs.items()}, arrays)
