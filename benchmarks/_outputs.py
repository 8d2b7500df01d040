"""What every speed benchmark does around its measurement: parse its config, write `<name>.json` / `.md` / `.png`,
print its table."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from transformers import HfArgumentParser


def parse_config(config_class, argv: list[str] | None, prog: str, doc: str, check: Callable | None = None):
    """The benchmark's config from the command line, or None after a one-line `<command>: error: ...` on stderr (a
    bad value, raised by the config or by `check(config)`), as argparse does for bad syntax."""
    parser = HfArgumentParser(config_class, prog=prog, description=doc.split("\n\n")[0])
    try:
        (config,) = parser.parse_args_into_dataclasses(args=argv)
        if isinstance(getattr(config, "name", None), str):
            check_output_name(config.name)
        if check is not None:
            check(config)
    except ValueError as error:
        print(f"{prog.removeprefix('python -m ')}: error: {error}", file=sys.stderr)
        return None
    return config


def tokens_label(n: int) -> str:
    """A token count as the tables print it: 4096 -> '4K', other counts as they are."""
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def check_output_name(name: str) -> None:
    """`name` is a plain file stem: the outputs it names stay inside `output_dir` (no folder, no `..`)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"name={name!r} must be a plain file name without folders (outputs go to <output_dir>/<name>.json); "
                         "choose the folder with --output_dir.")


def write_outputs(report: dict, output_dir: str | Path, name: str, markdown: str, plot: Callable[[Path], object] | None = None) -> dict[str, Path]:
    """Write `<name>.json` (the report), `<name>.md` (its table) and, with `plot`, `<name>.png` under `output_dir`."""
    check_output_name(name)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["md"].write_text(markdown)
    if plot is not None:
        paths["png"] = out / f"{name}.png"
        plot(paths["png"])
    return paths


def benchmark_main(config_class, argv, prog: str, doc: str, run: Callable, markdown_table: Callable, write_report: Callable, check: Callable | None = None) -> int:
    """A benchmark's command line: parse its config (exit 2 on a bad value), `run(config)`, write and print the outputs."""
    config = parse_config(config_class, argv, prog, doc, check)
    if config is None:
        return 2
    report = run(config)
    paths = write_report(report, config)
    print(markdown_table(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
