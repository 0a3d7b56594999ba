"""The check of a cosine schedule's horizon (the step --max-time is predicted to end at, fastrnn.choose) against
the run's own pace, once, early in the run."""

from fastrnn.choose import CHECKED_KEY, HORIZON_KEY, horizon

CHECK_SHARE, CHECK_STEPS = 0.02, 20  # the horizon is predicted again once the run has timed this share of
# --max-time of its own steps, and this many steps
CHECK_TOLERANCE = 0.10  # and replaced if the two predictions differ by more than this share


class HorizonCheck:
    """The horizon of a cosine schedule tied to --max-time comes from a speed measured before the run started, or
    cached from an earlier measurement: one taken while other work kept the cores busy can be far off (rnn H16
    measured at 33k chars/s on a busy machine trained at 3.68M: the rate reached its floor after 3% of the run).
    Once the run has trained CHECK_SHARE of --max-time (CHECK_STEPS steps at least), the horizon is predicted
    again from its own pace, and replaces the first if they differ by more than CHECK_TOLERANCE; once a run
    (config.extra[CHECKED_KEY], kept by its checkpoints, so a resumed run does not check again)."""

    def __init__(self, config, first):
        self.need, self.chars = CHECK_SHARE * config.max_time, config.batch_size * config.seq_len
        self.batch, self.seq_len, self.first = config.batch_size, config.seq_len, first
        self.start = None  # (step, clock) of the first step observed

    @staticmethod
    def wanted(config, total_steps, ranks):
        """A horizon predicted for --max-time (not a step limit) and not yet checked, in a run of one process (the
        ranks of several would time their steps differently and could disagree)."""
        return (config.lr_schedule == "cosine" and bool(config.max_time) and not total_steps and ranks == 1
                and bool(config.extra.get(HORIZON_KEY)) and not config.extra.get(CHECKED_KEY))

    def observe(self, step, now, left):
        """After a training step (not the first, which compiles): `step` steps done, `now` the clock, `left`
        seconds of --max-time left. None until enough was timed; then (the horizon to keep, the line saying it
        changed, or None if it held). The pace is the session's own, from step to step on the wall clock (what a
        step costs beyond its kernels included: reading the batch, logging, evaluations)."""
        if self.start is None:
            self.start = (step, now)
            return None
        steps, seconds = step - self.start[0], now - self.start[1]
        if steps < CHECK_STEPS or seconds < self.need:
            return None
        speed = steps * self.chars / seconds
        new = horizon(speed, left, self.batch, self.seq_len, step)
        if abs(new / self.first - 1) <= CHECK_TOLERANCE:
            return self.first, None
        return new, (f"cosine schedule: this run's own steps ({speed:,.0f} chars/s) predict --max-time to end at step "
                     f"{new:,}, not {self.first:,} as predicted before it started: the rate now reaches its floor "
                     f"there")
