"""forward() for training: the loss reaches the encoder pass and the projection."""

import pytest
import torch

from modeling_memcomp import build_prompt


def training_batch(model, corpus):
    ids = model.tokenizer(corpus[0], add_special_tokens=False)["input_ids"]
    chunk_ids, chunk_mask, counts = model.chunk_passages([ids])
    prompt = build_prompt(model.tokenizer, model.config, counts[0], "Reconstruct.", template="plain", target=ids)
    return dict(
        input_ids=torch.tensor([prompt.input_ids]),
        labels=torch.tensor([prompt.labels]),
        chunk_ids=chunk_ids,
        chunk_attention_mask=chunk_mask,
    )


def test_chunk_ids_without_their_mask_are_refused(model, corpus):
    batch = training_batch(model, corpus)
    del batch["chunk_attention_mask"]
    with pytest.raises(ValueError, match="chunk_ids need chunk_attention_mask"):
        model(**batch)


def test_backward_reaches_projection_and_encoder_layers(make_model, corpus):
    model = make_model().train()
    batch = training_batch(model, corpus)
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert model.memory_projection.weight.grad.abs().sum() > 0
    # Gradient into layer 0 through the memory only: compare with a pass that detaches the memory.
    layer0 = model.language_model.model.layers[0].self_attn.q_proj.weight
    with_memory = layer0.grad.clone()
    model.zero_grad()
    memory = model.encode_chunks(batch["chunk_ids"], batch["chunk_attention_mask"]).detach()
    model(input_ids=batch["input_ids"], labels=batch["labels"], memory_embeds=memory).loss.backward()
    assert model.memory_projection.weight.grad is None or model.memory_projection.weight.grad.abs().sum() == 0
    assert not torch.allclose(with_memory, layer0.grad), "encoder pass contributed no gradient"


def test_forward_with_chunks_equals_forward_with_precomputed_memory(model, corpus):
    batch = training_batch(model, corpus)
    with torch.no_grad():
        direct = model(**batch).loss
        memory = model.compress(corpus[0]).embeds
        cached = model(input_ids=batch["input_ids"], labels=batch["labels"], memory_embeds=memory).loss
    torch.testing.assert_close(direct, cached)


def test_loss_falls_on_a_fixed_batch(make_model, corpus):
    model = make_model(seed=1).train()
    batch = training_batch(model, corpus)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
