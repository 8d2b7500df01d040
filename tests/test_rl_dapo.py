"""DAPO helpers: overlong penalty, group filter, warmup switch, rollout batch plumbing."""

import pytest
import torch

from trainers.dapo import concat_rollouts, dynamic_sampling_enabled, filter_groups, overlong_penalty, take_rows


# ------------------------------------------------------------------ overlong penalty
def test_overlong_penalty_paper_values():
    # Table 10: 600-token limit, 100-token buffer, factor 0.5 -> free up to 500, ramp to -0.5 at 600.
    lengths = [0, 499, 500, 501, 550, 575, 600, 601, 5000]
    expected = [0.0, 0.0, 0.0, -0.005, -0.25, -0.375, -0.5, -0.5, -0.5]
    assert overlong_penalty(lengths) == pytest.approx(expected)


def test_overlong_penalty_custom_settings_and_scaling():
    assert overlong_penalty([80, 90, 100, 101], max_length=100, buffer=20, factor=1.0) == pytest.approx(
        [0.0, -0.5, -1.0, -1.0]
    )
    assert overlong_penalty([90], max_length=100, buffer=20, factor=0.0) == [0.0]
    assert overlong_penalty([10, 11], max_length=10, buffer=0) == [0.0, -0.5]  # hard limit without a buffer


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_length=0), "max_length"),
        (dict(buffer=700), "buffer"),
        (dict(buffer=-1), "buffer"),
        (dict(factor=-0.5), "factor"),
    ],
)
def test_overlong_penalty_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        overlong_penalty([10], **kwargs)


def test_overlong_penalty_rejects_negative_lengths():
    with pytest.raises(ValueError, match="non-negative"):
        overlong_penalty([-1])


# ------------------------------------------------------------------ group filter
@pytest.mark.parametrize("group_size", [8, 16])
def test_filter_groups_hand_made_tables(group_size):
    all_zero = [0.0] * group_size
    all_one = [1.0] * group_size
    one_right = [0.0] * (group_size - 1) + [1.0]
    one_wrong = [1.0] + [1.0] * (group_size - 2) + [0.0]
    equal_but_penalised = [-0.25] * group_size  # all equal, even if non-binary
    table = all_zero + one_right + all_one + one_wrong + equal_but_penalised
    assert filter_groups(table, group_size) == [1, 3]
    assert filter_groups(torch.tensor(all_zero * 3), group_size) == []
    assert filter_groups(all_one + all_zero, group_size) == []
    assert filter_groups(one_right * 2, group_size) == [0, 1]


def test_filter_groups_tiny_differences_count():
    assert filter_groups([1.0, 1.0, 1.0, 1.0 - 1e-6], 4) == [0]


def test_filter_groups_drops_groups_with_a_missing_reward():
    nan = float("nan")
    assert filter_groups([0.0, 1.0, 0.0, nan, 0.0, 1.0, 1.0, 0.0, nan, nan, nan, nan], 4) == [1]


def test_filter_groups_rejects_ragged_tables():
    with pytest.raises(ValueError, match="not a multiple of group_size=8"):
        filter_groups([0.0] * 12, 8)
    with pytest.raises(ValueError, match="group_size"):
        filter_groups([0.0], 0)


# ------------------------------------------------------------------ warmup switch
def test_dynamic_sampling_switches_on_at_step_25():
    assert [dynamic_sampling_enabled(step) for step in (0, 1, 24)] == [False, False, False]
    assert [dynamic_sampling_enabled(step) for step in (25, 26, 1000)] == [True, True, True]
    assert dynamic_sampling_enabled(0, warmup_rollouts=0)


# ------------------------------------------------------------------ batch plumbing
def _batch(prompt_len, completion_len, rows, offset=0):
    return {
        "prompt_ids": torch.arange(rows * prompt_len).view(rows, prompt_len) + offset,
        "prompt_mask": torch.ones(rows, prompt_len, dtype=torch.long),
        "completion_ids": torch.arange(rows * completion_len).view(rows, completion_len) + offset,
        "completion_mask": torch.ones(rows, completion_len, dtype=torch.long),
        "advantages": torch.arange(rows, dtype=torch.float) + offset,
        "memory_embeds": torch.ones(rows, 2, 3),
        "num_items_in_batch": torch.tensor(99),
        "old_per_token_logps": None,
    }


def test_concat_rollouts_pads_prompts_left_and_completions_right():
    merged = concat_rollouts([_batch(2, 3, 2), _batch(4, 1, 1, offset=100)], pad_values={"prompt_ids": -1})
    assert merged["prompt_ids"].tolist() == [[-1, -1, 0, 1], [-1, -1, 2, 3], [100, 101, 102, 103]]
    assert merged["prompt_mask"].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]]
    assert merged["completion_mask"].tolist() == [[1, 1, 1], [1, 1, 1], [1, 0, 0]]
    assert merged["advantages"].tolist() == [0.0, 1.0, 100.0]
    assert merged["memory_embeds"].shape == (3, 2, 3)
    assert "num_items_in_batch" not in merged and "old_per_token_logps" not in merged


def test_take_rows_keeps_alignment():
    picked = take_rows(_batch(2, 3, 4), [3, 1])
    assert picked["advantages"].tolist() == [3.0, 1.0]
    assert picked["prompt_ids"].tolist() == [[6, 7], [2, 3]]
    assert picked["num_items_in_batch"].item() == 99
