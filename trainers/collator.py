"""Batches any mix of task examples into the inputs `MemCompForCausalLM.forward` trains on."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modeling_memcomp.prompting import IGNORE_INDEX

from .stages import TASKS


@dataclass
class MemCompCollator:
    """Right-pads decoder rows and stacks every example's chunks, in row order, into one `(n, C)` batch.

    Output: `input_ids`, `attention_mask`, `labels` (-100 on padding), `chunk_ids` / `chunk_attention_mask`
    (omitted when no example has memory), `task_ids` (index into `stages.TASKS`) and, when the examples
    carry them, `example_ids` and `emphasis_mask` (True at the positions an example lists in `emphasis`).
    The Trainer pops the last three before calling the model.
    """

    pad_token_id: int
    chunk_size: int
    mem_token_id: int | None = None  # when given, each row's placeholder count is checked against its chunks
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty list of examples.")
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
        chunks = []
        for row, feature in enumerate(features):
            ids, n = feature["input_ids"], len(feature["input_ids"])
            if len(feature["labels"]) != n:
                raise ValueError(f"example {row}: labels and input_ids differ in length ({len(feature['labels'])} vs {n}).")
            input_ids[row, :n] = torch.as_tensor(ids)
            labels[row, :n] = torch.as_tensor(feature["labels"])
            attention_mask[row, :n] = 1
            if self.mem_token_id is not None:
                slots = int((input_ids[row, :n] == self.mem_token_id).sum())
                if slots != len(feature["chunks"]):
                    raise ValueError(f"example {row}: {slots} <MEM> placeholders for {len(feature['chunks'])} chunks.")
            chunks.extend(feature["chunks"])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if chunks:
            chunk_ids = torch.full((len(chunks), self.chunk_size), self.pad_token_id, dtype=torch.long)
            chunk_mask = torch.zeros((len(chunks), self.chunk_size), dtype=torch.long)
            for i, chunk in enumerate(chunks):
                if not 0 < len(chunk) <= self.chunk_size:
                    raise ValueError(f"chunk {i} has {len(chunk)} tokens; chunks hold 1..{self.chunk_size}.")
                chunk_ids[i, : len(chunk)] = torch.as_tensor(chunk)
                chunk_mask[i, : len(chunk)] = 1
            batch["chunk_ids"], batch["chunk_attention_mask"] = chunk_ids, chunk_mask
        batch["task_ids"] = torch.tensor([TASKS.index(f["task"]) for f in features], dtype=torch.long)
        if any(f.get("emphasis") for f in features):
            emphasis = torch.zeros((len(features), longest), dtype=torch.bool)
            for row, feature in enumerate(features):
                emphasis[row, torch.as_tensor(feature.get("emphasis") or [], dtype=torch.long)] = True
            batch["emphasis_mask"] = emphasis
        if all("example_id" in f for f in features):
            batch["example_ids"] = torch.tensor([f["example_id"] for f in features], dtype=torch.long)
        return batch

    @classmethod
    def for_model(cls, model, **kwargs) -> "MemCompCollator":
        """A collator with the model's pad token, chunk size and placeholder id."""
        config = model.config
        pad = config.text_config.pad_token_id
        return cls(pad_token_id=0 if pad is None else pad, chunk_size=config.chunk_size, mem_token_id=config.mem_token_id, **kwargs)
