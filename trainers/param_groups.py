"""Optimizer parameter groups of Table 9: full fine-tuning, LoRA adapters and the memory projection."""

from __future__ import annotations

from collections.abc import Collection

from torch import nn

GROUPS = ("full", "full_no_decay", "lora", "projection")


def group_of(name: str, decay_names: Collection[str]) -> str:
    """The group of one trainable parameter, from its name."""
    if "lora_" in name:
        return "lora"
    if "memory_projection" in name or ".pooling." in f".{name}":
        return "projection"
    return "full" if name in decay_names else "full_no_decay"


def parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    lora_learning_rate: float,
    lora_weight_decay: float,
    projection_learning_rate: float,
    decay_names: Collection[str],
) -> list[dict]:
    """Param groups (with a `name` key) for a torch optimizer; empty groups are left out.

    `decay_names` are the parameters that take weight decay (Trainer's rule: not biases or norms).
    """
    settings = {
        "full": (learning_rate, weight_decay),
        "full_no_decay": (learning_rate, 0.0),
        "lora": (lora_learning_rate, lora_weight_decay),
        "projection": (projection_learning_rate, weight_decay),
    }
    params: dict[str, list] = {group: [] for group in GROUPS}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            params[group_of(name, decay_names)].append(parameter)
    return [
        {"name": group, "params": params[group], "lr": settings[group][0], "weight_decay": settings[group][1]}
        for group in GROUPS
        if params[group]
    ]


def parameter_report(groups: list[dict]) -> str:
    """A table of trainable parameters per group with its learning rate and weight decay."""
    lines = [f"{'group':<14}{'tensors':>8}{'parameters':>14}{'lr':>10}{'wd':>6}"]
    for group in groups:
        count = sum(p.numel() for p in group["params"])
        lines.append(f"{group['name']:<14}{len(group['params']):>8}{count:>14,}{group['lr']:>10.1e}{group['weight_decay']:>6.2f}")
    total = sum(p.numel() for group in groups for p in group["params"])
    lines.append(f"{'total':<14}{'':>8}{total:>14,}")
    return "\n".join(lines)
