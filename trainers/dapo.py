"""DAPO pieces TRL's `GRPOTrainer` lacks: overlong penalty factor, dynamic-sampling group filter and its warmup.

Pure functions over rewards and rollout batches, so they can be tested on hand-made tables; the trainer in
`trainers.grpo` wires them in. Reference: DAPO (Yu et al., 2025) and the paper's Table 10.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from trl.rewards import get_soft_overlong_punishment

from .stages import RL


def overlong_penalty(
    lengths: Sequence[int], max_length: int = RL.max_completion_length, buffer: int = RL.overlong_buffer,
    factor: float = RL.overlong_penalty_factor,
) -> list[float]:
    """DAPO soft overlong punishment times `factor`, one value per completion length.

    0 up to `max_length - buffer` tokens, then a linear ramp to `-factor` at `max_length`, and `-factor`
    beyond it (TRL's `get_soft_overlong_punishment`, scaled).
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}.")
    if not 0 <= buffer <= max_length:
        raise ValueError(f"buffer must be in [0, max_length={max_length}], got {buffer}.")
    if factor < 0:
        raise ValueError(f"factor must be >= 0 (it scales a penalty), got {factor}.")
    lengths = [int(n) for n in lengths]
    if any(n < 0 for n in lengths):
        raise ValueError("lengths must be non-negative token counts.")
    punish = get_soft_overlong_punishment(max_completion_len=max_length, soft_punish_cache=buffer)
    return [factor * value for value in punish([range(n) for n in lengths])]


def _grouped(rewards, group_size: int) -> torch.Tensor:
    rewards = torch.as_tensor(rewards, dtype=torch.float64).flatten()
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}.")
    if rewards.numel() % group_size:
        raise ValueError(
            f"got {rewards.numel()} rewards, not a multiple of group_size={group_size}: rewards must list every "
            "rollout of every prompt, grouped by prompt."
        )
    return rewards.view(-1, group_size)


def filter_groups(rewards, group_size: int) -> list[int]:
    """Indices of the prompt groups whose rewards are not all equal (DAPO dynamic sampling, VERL `filter_groups`).

    `rewards` holds `num_groups * group_size` values, the `group_size` rollouts of each prompt contiguous. Pass the
    accuracy (judge) reward: a group whose accuracy is constant carries no learning signal, whatever other rewards
    such as the overlong penalty do to its total, so it is dropped. A group with a missing reward (NaN: a failed
    judgement) is dropped too.
    """
    grouped = _grouped(rewards, group_size)
    varied = (grouped != grouped[:, :1]).any(dim=1) & ~torch.isnan(grouped).any(dim=1)
    return varied.nonzero().flatten().tolist()


def dynamic_sampling_enabled(rollouts_done: int, warmup_rollouts: int = RL.dynamic_sampling_warmup_rollouts) -> bool:
    """Whether dynamic sampling filters the next rollout batch: only once `warmup_rollouts` batches are done.

    The paper (Appendix I.3) lets the model learn the `\\boxed{}` format for 25 steps before filtering; a step there
    is one VERL rollout batch (128 prompts), not an optimizer step.
    """
    return rollouts_done >= warmup_rollouts


# ------------------------------------------------------------------------------------- rollout batches
LEFT_PADDED = ("prompt_ids", "prompt_mask")
"""Rollout fields padded on the left (prompts); all other 2-D+ fields are right-padded (completions, memory)."""


def take_rows(batch: dict, rows: Sequence[int]) -> dict:
    """The rows `rows` of a rollout batch (tensors and lists along dim 0; scalars are kept as they are)."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            out[key] = value[index.to(value.device)]
        elif isinstance(value, list):
            out[key] = [value[i] for i in index.tolist()]
        else:
            out[key] = value
    return out


def as_fillers(batch: dict) -> dict:
    """The rows of a rollout batch with no completion tokens and zero advantage: they keep a batch's shape but never
    enter the loss, its token count (`num_items_in_batch`) or the masked metrics."""
    out = dict(batch)
    for key in ("completion_mask", "tool_mask"):
        if isinstance(out.get(key), torch.Tensor):
            out[key] = torch.zeros_like(out[key])
    out["advantages"] = torch.zeros_like(out["advantages"])
    return out


def concat_rollouts(batches: Sequence[dict], pad_values: dict[str, float] | None = None) -> dict:
    """Concatenate rollout batches whose prompts/completions were padded to different lengths.

    Prompt fields are left-padded, the others right-padded, with `pad_values[key]` (default 0). Scalar
    entries (e.g. `num_items_in_batch`) are dropped: they describe one batch and must be recomputed.
    """
    if not batches:
        raise ValueError("concat_rollouts needs at least one batch.")
    pad_values = pad_values or {}
    keys = [k for k, v in batches[0].items() if v is not None and not (isinstance(v, torch.Tensor) and v.ndim == 0)]
    out = {}
    for key in keys:
        values = [b[key] for b in batches]
        if isinstance(values[0], list):
            out[key] = [item for value in values for item in value]
            continue
        if values[0].ndim == 1:
            out[key] = torch.cat(values)
            continue
        width = max(v.shape[1] for v in values)
        padded = []
        for value in values:
            extra = width - value.shape[1]
            if extra:
                shape = (value.shape[0], extra, *value.shape[2:])
                filler = value.new_full(shape, pad_values.get(key, 0))
                value = torch.cat([filler, value] if key in LEFT_PADDED else [value, filler], dim=1)
            padded.append(value)
        out[key] = torch.cat(padded)
    return out
