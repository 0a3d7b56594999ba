"""fastrnn's cache directory: $FASTRNN_CACHE_DIR, else $XDG_CACHE_HOME/fastrnn or ~/.cache/fastrnn. It holds the
kernel plans measured on this machine (fastrnn.kernels.dispatch) and the corpora train prepared from text
(fastrnn.corpus.fromtext); anything in it can be deleted (it is measured or prepared again when needed)."""

import os


def root():
    return os.environ.get("FASTRNN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fastrnn")
