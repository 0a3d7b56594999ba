"""--max-time as the wall clock of a whole run: training, evaluations, checkpoints and samples, over all its
sessions (a resumed run has what its earlier sessions left).

The run measures what each phase took (the last training step, an evaluation's minibatch, a checkpoint, a
sample) and takes another step only while that step, the evaluation and checkpoint that may follow it and the
final evaluation and checkpoint all fit before the deadline. A final evaluation expected to take more than half
of --max-time is not waited for (the run trains instead, and skips it); an evaluation that no longer fits is
skipped, and one running at the deadline is stopped there (fastrnn.validation.Scoring).
"""

import math
import time

from fastrnn.validation import EVAL_COST

CHECKPOINT_GUESS = 0.05  # seconds of a checkpoint before one was measured, plus its bytes at CHECKPOINT_RATE
CHECKPOINT_RATE = 100e6  # bytes/s
LARGEST_RESERVE = 0.5  # share of --max-time a final evaluation may be kept waiting for
MARGIN, SLACK = 2.0, 0.5  # the time kept for what follows the next step: MARGIN x its measured cost + SLACK
# seconds, or 5% of --max-time if less (on a busy machine a phase can take twice its last time: on the 11M-character novels corpus, final
# evaluations kept for with no margin, then with 1.5x + 0.25 s, were stopped at the deadline after 24 and 32 of
# their 40 minibatches)


class TimeBudget:
    """The deadline of this session and the measured cost of each phase.

    max_time: seconds of the whole run (0: no limit); spent: seconds earlier sessions used; started: this
    session's start on `clock`; state_bytes: what a checkpoint writes (for its estimate before one is measured).
    """

    def __init__(self, max_time, spent, started, state_bytes=0, clock=time.perf_counter):
        self.max_time, self.clock = max_time, clock
        self.deadline = started + max_time - spent if max_time else math.inf
        self.costs = {"checkpoint": CHECKPOINT_GUESS + state_bytes / CHECKPOINT_RATE}

    @property
    def limited(self):
        return self.deadline != math.inf

    def left(self):
        return self.deadline - self.clock()

    def measured(self, phase, seconds):
        """What `phase` ("step", "eval_batch", "checkpoint", "sample") took last."""
        self.costs[phase] = seconds

    def eval_seconds(self, batches):
        """The expected seconds of an evaluation of `batches` minibatches (from a measured evaluation, else from
        the training step)."""
        per = self.costs.get("eval_batch")
        if per is None:
            per = EVAL_COST * self.costs.get("step", 0.0)
        return batches * per

    def eval_fits(self, batches):
        """An evaluation of `batches` minibatches and the checkpoint after it end before the deadline."""
        return self.eval_seconds(batches) + self.costs["checkpoint"] <= self.left()

    def final_eval_waited_for(self, batches):
        """The run keeps time for its final evaluation (it takes at most LARGEST_RESERVE of --max-time)."""
        return self.eval_seconds(batches) <= LARGEST_RESERVE * self.max_time

    def time_up(self, eval_batches, sampling):
        """No time for another step: the step, an evaluation and a sample at it (eval_batches 0: none), the
        final evaluation where waited for, and two checkpoints (one at the step, the final one)."""
        if not self.limited:
            return False
        reserve = self.costs.get("step", 0.0) + 2 * self.costs["checkpoint"]
        if eval_batches and self.final_eval_waited_for(eval_batches):
            reserve += self.eval_seconds(eval_batches)
        if sampling:
            reserve += self.costs.get("sample", 0.0)
        return MARGIN * reserve + min(SLACK, 0.05 * self.max_time) >= self.left()

    def past_deadline(self):
        """An evaluation in progress must stop: only the final checkpoint's time is left."""
        return self.limited and self.left() <= self.costs["checkpoint"]
