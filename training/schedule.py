"""WarmupDecayLR (paper Sec. 5.1): linear warm-up to the base lr, then linear decay to 0 at the last iteration.

A small pure function anyone can read and test; the trainers set each step's lr from it.
"""
from __future__ import annotations


def warmup_decay_lr(step: int, *, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of optimiser step `step` (0-based).

    Steps 0..warmup-1 rise linearly from base_lr/warmup to base_lr; from there the lr falls linearly and
    reaches 0 at step `total_steps` (so the last real step, total_steps-1, still gets a small positive lr).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    return base_lr * max(0.0, (total_steps - step) / decay_steps)
