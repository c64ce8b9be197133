"""The time budget of a fine-tuning run (--time-budget): plan the epochs, re-plan when they slow down.

Without --epochs the run times its first epoch (the warm-up, the same whatever the total) and fixes
the number of epochs to what fits the rest of the budget, so the cosine schedule reaches zero inside
it (`plan`). A shared or throttled machine can slow later epochs: then the schedule would be cut
while the learning rate is still high (the study's flowers run planned 58 epochs at 44 s, and its
epochs went to 65 s from epoch 9 on). So after every later epoch the plan is checked against the
slowest epoch so far and shortened when it no longer fits (`replan`); it is never lengthened.
With --epochs given, tl only warns after the first epoch (`warn_if_short`).

Every rank takes rank 0's clock and epoch time, so all ranks train the same schedule.
"""

from __future__ import annotations

import time
from dataclasses import replace

from tl_cli.finetune.config import FinetuneConfig
from tl_cli.finetune.schedule import planned_epochs, settle_mix
from tl_cli.finetune.state import Training, TrainState
from tl_cli.runtime import distributed
from tl_cli.runtime.progress import Reporter


def _clock(epoch_s: float, deadline: float) -> tuple[float, float]:
    """(seconds of budget left, epoch seconds) as rank 0 measures them."""
    return distributed.broadcast_object((deadline - time.perf_counter(), epoch_s))


def _saved(tr: Training, cfg: FinetuneConfig) -> FinetuneConfig:
    """`cfg`, written to the run folder by rank 0: --resume follows the plan as it stands."""
    if distributed.is_main():
        cfg.save(tr.run_dir)
    return cfg


def plan(tr: Training, state: TrainState, epoch_s: float, deadline: float) -> FinetuneConfig:
    """Fix the number of epochs to what fits the budget (after the first epoch), decide --mix auto for
    that length, and save the config: --resume continues the same plan."""
    probe = state.history[0]["val_accuracy"] if tr.cfg.head_init == "probe" else None
    left, epoch_s = _clock(epoch_s, deadline)
    cap = tr.cfg.plan_cap(probe)
    n = planned_epochs(state.epoch, epoch_s, left, cap)
    if _no_epoch_fits(epoch_s, left):  # the loop stops before the next epoch: say that, not a plan it won't keep
        tr.reporter.log(f"epoch {state.epoch} took {epoch_s:.0f} s and {left:.0f} s of the time budget are left: "
                        f"no further epoch fits, so the run ends here (a larger --time-budget trains longer)")
    else:
        tr.reporter.log(f"planned {n} epochs: epoch {state.epoch} took {epoch_s:.0f} s and {left:.0f} s of the time "
                        f"budget are left, so the learning rate decays to zero at epoch {n}"
                        + (" (the most planned)" if n == cap else ""))
    return _saved(tr, settle_mix(replace(tr.cfg, epochs=n, plan_epochs=False), probe, tr.reporter))


def replan(tr: Training, state: TrainState, epoch_s: float, deadline: float) -> FinetuneConfig:
    """The planned config, shortened if its remaining epochs no longer fit at `epoch_s` (the slowest
    epoch so far) each; said in one line and saved. The cosine then ends at the new last epoch: its
    learning rate steps down once, instead of the budget stopping the run halfway down the curve."""
    left, epoch_s = _clock(epoch_s, deadline)
    n = planned_epochs(state.epoch, epoch_s, left, tr.cfg.epochs)
    if n >= tr.cfg.epochs or _no_epoch_fits(epoch_s, left):  # the loop itself stops before the next epoch
        return tr.cfg
    tr.reporter.log(f"re-planned {n} epochs (was {tr.cfg.epochs}): the slowest epoch took {epoch_s:.0f} s and "
                    f"{left:.0f} s of the time budget are left, so the learning rate now decays to zero at epoch {n}")
    return _saved(tr, replace(tr.cfg, epochs=n))


def _no_epoch_fits(epoch_s: float, left_s: float) -> bool:
    """The training loop's own rule (trainer._epochs): the next epoch starts only if it fits."""
    return epoch_s > left_s


def warn_if_short(reporter: Reporter, cfg: FinetuneConfig, done: int, epoch_s: float, deadline: float) -> None:
    """Say early when the budget will cut a run of given --epochs short: its schedule would end at high learning rate."""
    fit = done + int(max(deadline - time.perf_counter(), 0.0) // epoch_s)
    if fit < cfg.epochs:
        reporter.log(f"note: at {epoch_s:.0f} s per epoch about {fit} of {cfg.epochs} epochs fit in the time budget, "
                     f"so the learning rate will not have decayed when it stops; --epochs {max(fit, 1)} plans for that")
