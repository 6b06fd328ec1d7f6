"""Learning-rate schedule: linear warmup then cosine decay, stepped once per iteration."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(step: int, total: int, warmup: int, warmup_factor: float = 0.001,
                         min_ratio: float = 0.0) -> float:
    """The lr multiplier at ``step``: ``warmup_factor`` -> 1 linearly over ``warmup`` steps, then cosine down to
    ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        a = step / warmup
        return warmup_factor * (1 - a) + a
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupCosine(LambdaLR):
    """``LambdaLR`` with :func:`warmup_cosine_factor`; its ``state_dict`` restores the position exactly."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                 warmup_factor: float = 0.001, min_ratio: float = 0.0, frozen_steps: list[int] | None = None):
        """``frozen_steps[i]``: parameter group ``i`` has lr 0 for its first that many steps (a frozen encoder),
        then follows the schedule where it stands."""
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.warmup_factor, self.min_ratio = warmup_factor, min_ratio
        self.frozen_steps = list(frozen_steps or [0] * len(optimizer.param_groups))
        super().__init__(optimizer, [partial(self._factor, frozen=f) for f in self.frozen_steps])

    def _factor(self, step: int, frozen: int = 0) -> float:
        if step < frozen:
            return 0.0
        return warmup_cosine_factor(step, self.total_steps, self.warmup_steps, self.warmup_factor, self.min_ratio)

    def set_total_steps(self, total_steps: int) -> None:
        """Stretch or shorten the cosine to end at ``total_steps``, from the current step on (a resumed run given a
        new total); the optimizer's lr becomes the new schedule's value at the current step."""
        if total_steps == self.total_steps:
            return
        self.total_steps = total_steps
        lrs = [base * self._factor(self.last_epoch, f) for base, f in zip(self.base_lrs, self.frozen_steps)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs

    def state_dict(self) -> dict:
        # the lambda is a bound method; keep the plain numbers only (weights_only loading)
        sd = super().state_dict()
        sd["lr_lambdas"] = [None] * len(self.lr_lambdas)
        return sd
