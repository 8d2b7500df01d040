"""`load_memcomp`: load a checkpoint without running Python from its folder unless asked to.

With memcomp installed, a memcomp checkpoint (`model_type: "memcomp"`) loads with the installed classes
(registered with the Auto classes in `modeling_memcomp/__init__.py`): the `*.py` files saved next to its
weights are never imported. A folder whose model needs its own code loads only with `trust_remote_code=True`.

Not Hub remote code: the model file never imports this module.
"""

from __future__ import annotations

import os

from .tokenizer_io import HUB_KWARGS


class RemoteCodeRequired(ValueError):
    """The checkpoint needs Python from its own folder, and `trust_remote_code` was not given."""


def _model_type(name_or_path) -> str | None:
    """`model_type` of the checkpoint's config.json, read as JSON (no code runs)."""
    from transformers import PreTrainedConfig

    try:
        return PreTrainedConfig.get_config_dict(name_or_path)[0].get("model_type")
    except (OSError, ValueError):
        return None


def _remote_code_error(name_or_path, what: str) -> RemoteCodeRequired:
    model_type = _model_type(name_or_path)
    return RemoteCodeRequired(
        f"{os.fspath(name_or_path)!r} ({what}, model_type {model_type!r}) needs Python code from its own folder, "
        "which memcomp never runs unasked: read that code, then opt in with trust_remote_code=True "
        "(`memcomp compress/ask --trust-remote-code`, `--trust_remote_code` for the benchmarks)."
    )


def load_memcomp(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False, **from_pretrained_kwargs):
    """`AutoModelForCausalLM.from_pretrained(name_or_path)` that imports no code from the checkpoint by default.

    A memcomp checkpoint loads with the installed classes and its tokenizer is loaded now, also without
    remote code (the model's lazy tokenizer would otherwise trust the folder). Any other model that needs
    its own code raises `RemoteCodeRequired` (a ValueError) saying how to opt in. `trust_remote_code=True`
    runs the folder's code, as `transformers` does.
    """
    from transformers import AutoModelForCausalLM

    from .modeling_memcomp import MemCompForCausalLM
    from .tokenizer_io import load_tokenizer

    trust_remote_code = bool(trust_remote_code)  # never None: transformers would prompt on a terminal
    folder = os.path.join(os.fspath(name_or_path), from_pretrained_kwargs.get("subfolder") or "")
    if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "config.json")):
        what = ("a training checkpoint with LoRA adapters, not a model: load the stage's output_dir (the merged model "
                "its run saves at the end)") if os.path.isfile(os.path.join(folder, "adapter_config.json")) else \
            "a folder without config.json: give the folder save_pretrained wrote"
        raise ValueError(f"{folder!r} is {what}.")
    path = os.fspath(name_or_path)
    if not os.path.exists(path) and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise ValueError(f"{path!r} does not exist: give a checkpoint folder or a Hub id (owner/name).")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, **from_pretrained_kwargs
        )
    except ValueError as error:
        if not trust_remote_code and "trust_remote_code=True" in str(error):
            raise _remote_code_error(name_or_path, "its model") from None
        raise
    if isinstance(model, MemCompForCausalLM) and getattr(model, "_tokenizer", None) is None:
        hub = {key: from_pretrained_kwargs[key] for key in HUB_KWARGS if key in from_pretrained_kwargs}
        try:
            model.tokenizer = load_tokenizer(os.fspath(name_or_path), trust_remote_code=trust_remote_code, **hub)
        except ValueError as error:
            if not trust_remote_code and "trust_remote_code=True" in str(error):
                raise _remote_code_error(name_or_path, "its tokenizer") from None
            raise ValueError(f"the tokenizer of {os.fspath(name_or_path)!r} could not be loaded: {error}") from error
        except OSError as error:
            raise ValueError(
                f"{os.fspath(name_or_path)!r} has no tokenizer ({error}); save it with the model "
                "(`model.save_pretrained` does) or set `model.tokenizer`."
            ) from error
    return model
