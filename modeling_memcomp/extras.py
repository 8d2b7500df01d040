"""Optional dependencies: a command whose extra is not installed stops before any work and names the extra.

    require_extra("eval", "memcomp bench", modules=["matplotlib"])
    # MissingExtraError: memcomp bench needs matplotlib, which is not installed: pip install "memcomp[eval]"

Not Hub remote code: the model file never imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.util import find_spec

EXTRA_MODULES = {
    "train": ("accelerate", "datasets", "peft", "yaml", "trl"),
    "rl": ("accelerate", "datasets", "peft", "yaml", "trl"),
    "eval": ("datasets", "rouge_score", "matplotlib", "yaml", "trl"),
}
"""Import names each extra of pyproject.toml installs; bitsandbytes (in `train`) is left out on purpose:
without it FQLoRA warns and trains plain LoRA."""


class MissingExtraError(ImportError):
    """A command needs an extra (`pip install "memcomp[<extra>]"`) that is not installed."""


def _importable(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except ValueError:  # imported already, without a spec (e.g. built in a test)
        return True


def require_extra(extra: str, command: str, modules: Sequence[str] | None = None) -> None:
    """Raise `MissingExtraError` naming `extra` when one of `modules` (default: all of the extra's) cannot be imported."""
    missing = [module for module in (modules or EXTRA_MODULES[extra]) if not _importable(module)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise MissingExtraError(
            f"{command} needs {', '.join(missing)}, which {verb} not installed: pip install \"memcomp[{extra}]\"",
            name=missing[0],
        )
