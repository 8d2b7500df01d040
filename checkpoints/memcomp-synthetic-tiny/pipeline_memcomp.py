"""The `memcomp-qa` pipeline, shipped with every checkpoint as remote code.

    from transformers import pipeline
    pipe = pipeline("memcomp-qa", model="you/memcomp-checkpoint", trust_remote_code=True)
    pipe(context="a long document ...", question="Who signed it?")            # {"answer": "..."}
    pipe(context=document, question=["Who?", "When?"], do_sample=False)     # [{"answer": ...}, {"answer": ...}]
    pipe([{"context": doc1, "question": "Who?"}, {"context": doc2, "question": "When?"}], batch_size=8)

Generation keyword arguments (`max_new_tokens`, `do_sample`, `template`, ...) go to `model.generate`, given to
`pipeline(...)` (defaults for every call) or to the call (which wins); so does `batch_size`.
"""

from __future__ import annotations

from transformers import Pipeline


class MemCompQAPipeline(Pipeline):
    """Question answering from compressed memory: compress each context, answer each question with `model.generate`."""

    _load_tokenizer = False  # the model loads the tokenizer saved with it, exactly as it was trained
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _pipeline_calls_generate = False  # generation settings are passed through to model.generate as given

    def _sanitize_parameters(self, **kwargs):
        return {}, kwargs, {}

    def preprocess(self, inputs: dict) -> dict:
        if not isinstance(inputs, dict) or "question" not in inputs or ("context" in inputs) == ("memory" in inputs):
            raise ValueError(
                "each input must be a dict with 'question' and exactly one of 'context' (text) or 'memory' "
                "(from model.compress)."
            )
        return inputs

    def _forward(self, inputs: dict, **generate_kwargs) -> dict:
        return {"answer": self.model.generate(**inputs, **generate_kwargs)}

    def postprocess(self, outputs: dict) -> dict:
        return outputs

    def __call__(self, inputs=None, *, context=None, question=None, memory=None, batch_size: int | None = None, **generate_kwargs):
        """`pipe(context=..., question=...)` -> `{"answer": str}`; lists of questions or of input dicts -> a list.

        One context (or memory) with a list of questions compresses once and prefills its memory once. A list of
        input dicts runs in batches of `batch_size` (the call's, else `pipeline(..., batch_size=)`, else 32) through one
        `model.generate` call each; settings given to `pipeline(...)` apply unless the call overrides them.
        """
        generate_kwargs = {**self._forward_params, **generate_kwargs}
        if batch_size is None:
            batch_size = self._batch_size or 32
        if inputs is None:
            if question is None:
                raise ValueError("pass question= with context= or memory=, or a list of {'context', 'question'} dicts.")
            source = {key: value for key, value in (("context", context), ("memory", memory)) if value is not None}
            item = self.preprocess({**source, "question": question})
            answers = self.model.generate(**item, batch_size=batch_size, **generate_kwargs)
            if isinstance(question, str):
                return {"answer": answers}
            return [{"answer": answer} for answer in answers]
        if isinstance(inputs, dict):
            return self.__call__(batch_size=batch_size, **inputs, **generate_kwargs)
        items = [self.preprocess(item) for item in inputs]
        results = []
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            key = "memory" if "memory" in batch[0] else "context"
            if any(key not in item for item in batch):
                raise ValueError("a list of inputs must all give 'context' or all give 'memory'.")
            answers = self.model.generate(
                **{key: [item[key] for item in batch]}, question=[item["question"] for item in batch],
                batch_size=batch_size, **generate_kwargs,
            )
            results += [{"answer": answer} for answer in answers]
        return results
