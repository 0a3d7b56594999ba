"""fastrnn's cache directory: $FASTRNN_CACHE_DIR, else $XDG_CACHE_HOME/fastrnn or ~/.cache/fastrnn. It holds the
kernel plans measured on this machine (fastrnn.kernels.calibrate), the speeds the choice of a model for a budget
measured (fastrnn.speeds) and the corpora train prepared from text (fastrnn.corpus.fromtext); anything in it can be
deleted (it is measured or prepared again when needed)."""

import json
import os


def root():
    return os.environ.get("FASTRNN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fastrnn")


def read_json(path):
    """The JSON object a cache file holds ({} if it is missing, unreadable or not an object)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path, data):
    """Write a cache file atomically (a temporary file renamed); a location that cannot be written is skipped
    (what it would hold is measured again)."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass
