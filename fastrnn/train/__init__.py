"""Training: `train()` runs a session of a run into a run directory. No math.

    session.py     train(): the run directory locked and read, the configuration resolved (resolve_config)
    setup.py       Setup: what a session sets up, and its state in and out of checkpoints
    run.py         Run: a Setup's training loop, as commented phases
    evaluation.py  the evaluations of the validation set, within --max-time, stopped by a signal
    health.py      the smoothed losses, divergence, healthy checkpoints and the rollback target
    runlog.py      RUN_DIR/log.jsonl and its rows

Elsewhere: the checkpoint and its schema (fastrnn.checkpoint.RunState), the data-parallel step
(fastrnn.distributed.DataParallel), the signal guard and the run directory's lock (fastrnn.guards,
fastrnn.rundir).

`train()` reports what happens through a callback `on_event(kind, data)` (the CLI prints; the library does not):

    start       the resolved configuration, model and data sizes
    compiling   the first step is about to start (it compiles the kernels)
    compiled    seconds taken by the first step (includes JIT compilation), excluded from chars/s
    log         a progress row (also appended to RUN_DIR/log.jsonl): step, epoch, loss, chars_per_sec, rss_mb, ...,
                and what the checkpoints and samples written since the previous row took (checkpoint_seconds: a
                list, one per checkpoint; sample_seconds: their sum), where there were any
    evaluating  how far a running evaluation is (at most every validation.PROGRESS_INTERVAL seconds), with its ETA
    eval        a validation loss, and how many val tokens it was computed on
    sample      a short generated text
    checkpoint  a checkpoint written
    message     a line for the user
    end         the summary (also returned)
"""

from fastrnn.checkpoint import RunState
from fastrnn.guards import StopFlag
from fastrnn.train.health import HEALTHY_RISE, RECENT_RISE, RECENT_SMOOTHING, SMOOTHING, STUCK_RISE, STUCK_STEPS
from fastrnn.train.run import Run
from fastrnn.train.runlog import LOG_NAME, RunLog, saved_step
from fastrnn.train.session import ARCHITECTURE, DEFAULT_MAX_EPOCHS, resolve_config, train
from fastrnn.train.setup import WARMUP_CHARS

__all__ = ["train", "resolve_config", "Run", "RunState", "RunLog", "StopFlag", "LOG_NAME", "DEFAULT_MAX_EPOCHS",
           "ARCHITECTURE", "WARMUP_CHARS", "SMOOTHING", "HEALTHY_RISE", "RECENT_RISE", "RECENT_SMOOTHING",
           "STUCK_RISE", "STUCK_STEPS", "saved_step"]
