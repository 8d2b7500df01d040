"""Any base model's chat template: tiny Llama-, Mistral- and GPT-2-architecture bases with locally built tokenizers.

Chat prompts (SFT/RL) render through the tokenizer's own template, with the memory block at the start of the user
turn; a tokenizer without a template (GPT-2) gets the package's ChatML with single-token turn markers. A CPT step,
an SFT step and `generate` work on each, training targets end with the template's own end-of-turn token, and no
stray ChatML appears where the base has its own markers.
"""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from modeling_memcomp import MemCompForCausalLM, build_prompt
from modeling_memcomp.prompting import IGNORE_INDEX, chat_layout, shared_prefix_length, stop_token_ids
from trainers.collator import MemCompCollator
from trainers.tasks import TaskBuilder

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
MISTRAL_TEMPLATE = (  # Mistral-Instruct v0.2 style: no system role (it raises), [INST] turns
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
FAMILIES = {
    "llama": dict(
        specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        bos="<|begin_of_text|>", eos="<|end_of_text|>", template=LLAMA3_TEMPLATE, markers=["<|start_header_id|>", "<|eot_id|>"],
        end="<|eot_id|>",
    ),
    "mistral": dict(
        specials=["<s>", "</s>", "[INST]", "[/INST]"], bos="<s>", eos="</s>", template=MISTRAL_TEMPLATE,
        markers=["[INST]", "[/INST]"], end="</s>",
    ),
    "gpt2": dict(specials=["<|endoftext|>"], bos="<|endoftext|>", eos="<|endoftext|>", template=None,
                 markers=["<|im_start|>", "<|im_end|>"], end="<|im_end|>"),
}


def family_tokenizer(corpus, family):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = FAMILIES[family]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=spec["specials"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=spec["bos"], eos_token=spec["eos"])
    tokenizer.chat_template = spec["template"]
    return tokenizer


def family_base(family, vocab_size):
    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, num_attention_heads=4, initializer_range=0.2)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_key_value_heads=2, **common))
    if family == "mistral":
        return MistralForCausalLM(MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_key_value_heads=2, **common))
    return GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=1024, vocab_size=vocab_size, initializer_range=0.2))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_model(request, corpus):
    family = request.param
    tokenizer = family_tokenizer(corpus, family)
    base = family_base(family, len(tokenizer))
    return family, MemCompForCausalLM.from_base(base, chunk_size=8, tokenizer=tokenizer)


def test_chat_prompts_use_the_bases_own_turn_markers(family_model):
    family, model = family_model
    spec, tokenizer = FAMILIES[family], model.tokenizer
    prompt = build_prompt(tokenizer, model.config, 3, "Who built it?", template="chat", target="Ada")
    tokens = tokenizer.convert_ids_to_tokens(prompt.input_ids)
    for marker in spec["markers"]:
        assert marker in tokens, f"{marker} is not a single token of the {family} prompt"
    if family != "gpt2":
        assert not any("im_start" in t or "im_end" in t for t in tokens), "stray ChatML in a templated prompt"
        assert "<|im_start|>" not in tokenizer.get_vocab()  # from_base adds ChatML only where there is no template
    assert prompt.input_ids.count(model.config.mem_token_id) == 3
    user_start = tokenizer.decode(prompt.input_ids)
    assert user_start.index("Who built it?") > user_start.index("<MEM_END>")  # the memory opens the user turn
    assert "compressed memory" in user_start  # the system text, in a system turn or (Mistral) the user turn
    assert chat_layout(tokenizer).system_in_user == (family == "mistral")
    # The loss covers exactly the answer and the template's own end of turn.
    target = [i for i, label in zip(prompt.input_ids, prompt.labels) if label != IGNORE_INDEX]
    assert tokenizer.convert_ids_to_tokens(target[-1:]) == [spec["end"]]
    assert tokenizer.decode(target[:-1]).strip() == "Ada"
    assert tokenizer.convert_tokens_to_ids(spec["end"]) in stop_token_ids(tokenizer)


def test_cpt_step_sft_step_and_generate(family_model, corpus):
    family, model = family_model
    model = model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cpt = TaskBuilder(model.tokenizer, model.config, template="plain", max_length=256)
    sft = TaskBuilder(model.tokenizer, model.config, template="chat", max_length=256)
    collate = MemCompCollator.for_model(model)
    for examples in ([cpt.reconstruction(corpus[0]), cpt.language_modeling(corpus[1])], [sft.qa(corpus[2], "Who?", "Ada")]):
        batch = collate(examples)
        batch.pop("task_ids")
        before = model.memory_projection.weight.detach().clone()
        loss = model(**batch).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        assert not torch.equal(before, model.memory_projection.weight)
    model.eval()
    greedy = dict(do_sample=False, max_new_tokens=6, repetition_penalty=1.0)
    answers = model.generate(context=[corpus[0], corpus[3]], question=["Who?", "Where?"], **greedy)
    assert answers == [model.generate(context=c, question=q, **greedy) for c, q in ((corpus[0], "Who?"), (corpus[3], "Where?"))]
    memory = model.compress(corpus[0])
    reused = model.generate(memory=memory, question=["Who?", "Where?"], **greedy)
    assert reused == model.generate(memory=memory, question=["Who?", "Where?"], reuse_prefix=False, **greedy)


def test_shared_prefix_is_a_prefix_of_every_question(family_model):
    family, model = family_model
    length = shared_prefix_length(model.tokenizer, model.config, 4, "rl")
    prompts = [build_prompt(model.tokenizer, model.config, 4, q, template="rl").input_ids for q in ("A?", "Longer question?")]
    assert prompts[0][:length] == prompts[1][:length] and prompts[0][length] != prompts[1][length]


def test_a_template_that_drops_message_contents_is_an_error(corpus):
    tokenizer = family_tokenizer(corpus, "llama")
    tokenizer.chat_template = "{% for message in messages %}{{ message['role'] }}{% endfor %}"
    with pytest.raises(ValueError, match="chat template cannot render"):
        chat_layout(tokenizer)
