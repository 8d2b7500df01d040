"""The `memcomp` console script: compress a file, answer from a memory, run the latency benchmark, publish.

    memcomp compress report.txt -o report.memory.safetensors --model ./my-memcomp
    memcomp ask --model ./my-memcomp --memory report.memory.safetensors --question "Who signed it?"
    memcomp ask --model ./my-memcomp --context report.txt --question "Who?" --question "When?"
    memcomp bench --lengths 4096 8192          # benchmarks.latency (see `memcomp bench --help`)
    memcomp push ...                           # hub_cards.push (see `memcomp push --help`)

`compress` and `ask` live here; the layers above the model add their commands (`bench`, `push`) as entry points of
the `memcomp.commands` group (pyproject.toml), so this module never names them. Not Hub remote code: the model file
never imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import warnings
from pathlib import Path

COMMANDS_GROUP = "memcomp.commands"
"""Entry-point group of the commands other packages add: name -> `module:main`, called with the remaining arguments."""


def delegated_commands() -> dict:
    """The installed commands of `COMMANDS_GROUP`, by name (read from package metadata: nothing is imported)."""
    from importlib.metadata import entry_points

    return {entry.name: entry for entry in entry_points(group=COMMANDS_GROUP)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memcomp", description=__doc__.split("\n\n")[0])
    delegated = delegated_commands()
    names = ",".join(["compress", "ask", *delegated])
    commands = parser.add_subparsers(dest="command", required=True, metavar=f"{{{names}}}")

    compress = commands.add_parser("compress", help="compress a text file into a memory (.safetensors)")
    compress.add_argument("file", type=Path, help="UTF-8 text file to compress")
    compress.add_argument("-o", "--output", type=Path, required=True, help="where to write the memory (.safetensors)")
    _model_arguments(compress)
    compress.add_argument("--batch-size", type=int, default=None, help="chunks per encoder pass (default: the model's)")
    compress.add_argument("--store", type=Path, default=None, help="MemoryStore folder: reuse a stored memory, store new ones")
    compress.set_defaults(handler=_compress, subparser=compress)

    ask = commands.add_parser("ask", help="answer questions from a memory file or a context file")
    source = ask.add_mutually_exclusive_group(required=True)
    source.add_argument("--memory", type=Path, help="memory written by `memcomp compress`")
    source.add_argument("--context", type=Path, help="UTF-8 text file, compressed on the fly")
    ask.add_argument("--question", "-q", action="append", required=True, help="question to answer (repeatable)")
    _model_arguments(ask)
    ask.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit in tokens")
    ask.add_argument("--greedy", action="store_true", help="greedy decoding instead of the paper's sampling defaults")
    ask.add_argument("--stream", action="store_true", help="print the answer token by token as it is generated (one question)")
    ask.add_argument(
        "--template", default=None, choices=("plain", "chat", "rl"),
        help="prompt template (default: the one the checkpoint was trained with, config.prompt_template)",
    )
    ask.set_defaults(handler=_ask, subparser=ask)

    for name, entry in delegated.items():
        commands.add_parser(name, help=f"arguments go to {entry.value} (see `memcomp {name} --help`)", add_help=False)
    return parser


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="memcomp checkpoint: local folder or Hub id")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu' or 'cuda[:i]'")
    parser.add_argument(
        "--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
        help="weights dtype, loaded directly in it (auto: the checkpoint's)",
    )
    parser.add_argument(
        "--device-map", default=None,
        help="accelerate device map, e.g. 'auto' to spread a large model over the GPUs (then --device is ignored)",
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true",
        help="run Python code saved in the checkpoint folder (off: memcomp checkpoints load with the installed classes)",
    )


def _fail(parser: argparse.ArgumentParser, message: str):
    """Exit with status 2 and a one-line `memcomp <command>: error: ...` (no usage: the arguments were fine)."""
    print(f"{parser.prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(2)


@contextlib.contextmanager
def _warnings_as_lines(parser: argparse.ArgumentParser):
    """Show memcomp's own warnings (store, memory fingerprint) as one `memcomp <command>: warning: ...` line."""
    from .memory import MemoryFingerprintWarning
    from .store import StaleMemoryWarning, StoreWriteWarning

    ours = (MemoryFingerprintWarning, StaleMemoryWarning, StoreWriteWarning)
    with warnings.catch_warnings():
        default = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, ours):
                print(f"{parser.prog}: warning: {' '.join(str(message).split())}", file=sys.stderr)
            else:
                default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def _delegate(command: str, entry, argv: list[str]) -> int:
    """Hand the remaining arguments to the entry point that owns the command (imported only now)."""
    from .extras import MissingExtraError

    module_name = entry.module
    try:
        return int(entry.load()(argv) or 0)
    except MissingExtraError as error:  # raised by the command's own check, before it does any work
        print(f"memcomp {command}: error: {error}", file=sys.stderr)
        return 2
    except ImportError as error:
        if sys.modules.get(module_name) is not None:
            raise  # the command itself failed on an import: a bug to see in full, not a missing extra
        print(f"memcomp {command}: error: {module_name} is not available ({error}); install memcomp with its extras.", file=sys.stderr)
        return 2


def _device(parser: argparse.ArgumentParser, device: str):
    """The `--device` as a torch.device, checked to exist here before any model is loaded."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        _fail(parser, f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N.")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        _fail(parser, f"--device {device}: CUDA is not available on this machine; use --device cpu (or auto).")
    try:
        torch.empty(0, device=parsed)
    except (RuntimeError, AssertionError) as error:
        _fail(parser, f"--device {device} cannot be used here ({error}); use --device cpu (or auto).")
    return parsed


def _load_model(parser: argparse.ArgumentParser, args: argparse.Namespace):
    from safetensors import SafetensorError

    from .loading import RemoteCodeRequired, load_memcomp

    device = None if args.device_map else _device(parser, args.device)
    name = args.model
    kwargs = {"dtype": args.dtype} if args.device_map is None else {"dtype": args.dtype, "device_map": args.device_map}
    try:
        model = load_memcomp(name, trust_remote_code=args.trust_remote_code, **kwargs)
    except RemoteCodeRequired as error:
        _fail(parser, f"--model: {error}")
    except (OSError, ValueError, SafetensorError) as error:  # SafetensorError: a truncated or corrupt weights file
        _fail(parser, f"--model {name!r} could not be loaded ({error}). Give a memcomp checkpoint folder or Hub id.")
    if not hasattr(model, "compress"):
        _fail(parser, f"--model {name!r} is a {type(model).__name__}, not a memcomp checkpoint (no compress()).")
    return (model if device is None else model.to(device)).eval()


def _read_text(parser: argparse.ArgumentParser, path: Path, flag: str) -> str:
    if not path.is_file():
        parser.error(f"{flag} {str(path)!r} does not exist or is not a file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        _fail(parser, f"{flag} {str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start}); "
                      "convert it first, e.g. `iconv -f latin1 -t utf-8`.")
    except OSError as error:
        _fail(parser, f"{flag} {str(path)!r} could not be read ({error.strerror or error}).")
    if not text.strip():
        parser.error(f"{flag} {str(path)!r} is empty: nothing to compress.")
    return text


def _check_output(parser: argparse.ArgumentParser, output: Path) -> None:
    """Refuse an `-o` that cannot be written before minutes of compression are spent."""
    if output.suffix != ".safetensors":
        parser.error(f"-o/--output must end with .safetensors, got {str(output)!r}.")
    if output.is_dir():
        _fail(parser, f"-o/--output {str(output)!r} is a directory; give a file path ending with .safetensors.")
    if output.exists() and not _is_memory_file(output):
        _fail(parser, f"-o/--output {str(output)!r} exists and is not a memcomp memory (model weights, say): it is "
                      "never replaced; give a new path.")
    folder = next((p for p in [output.parent, *output.parent.parents] if p.exists()), Path("."))
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        _fail(parser, f"-o/--output {str(output)!r} cannot be written: {str(folder)!r} is not a writable folder.")


def _is_memory_file(path: Path) -> bool:
    """Whether `path` is a safetensors file `MemoryEmbeddings.save` wrote (the only kind `-o` may replace)."""
    from safetensors import SafetensorError, safe_open

    from .memory import MEMORY_FORMAT

    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("format") == MEMORY_FORMAT
    except (OSError, SafetensorError):
        return False


def _save(parser: argparse.ArgumentParser, memory, output: Path) -> None:
    """Write the memory atomically (temporary file, then rename): a failed write leaves no partial file."""
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        memory.save(temporary)
        os.replace(temporary, output)
    except OSError as error:
        reason = "no space left on the device" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        _fail(parser, f"-o/--output {str(output)!r} could not be written ({reason}).")
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()


def _compress(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    text = _read_text(parser, args.file, "FILE")
    _check_output(parser, args.output)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be a positive integer, got {args.batch_size}.")
    model = _load_model(parser, args)
    with _warnings_as_lines(parser):
        try:
            if args.store is not None:
                from .store import MemoryStore

                memory = MemoryStore(args.store, model).compress(text, batch_size=args.batch_size)  # a failed write warns
            else:
                memory = model.compress(text, batch_size=args.batch_size)
        except ValueError as error:
            _fail(parser, str(error))
    _save(parser, memory, args.output)
    print(
        f"compressed {memory.num_source_tokens} tokens into {len(memory)} memory embeddings "
        f"({memory.compression_rate:.1f}x) -> {args.output}"
    )
    return 0


def _ask(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .memory import MemoryEmbeddings

    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be a positive integer, got {args.max_new_tokens}.")
    if any(not q.strip() for q in args.question):
        parser.error("--question is empty: give the question text.")
    if args.memory is not None:
        try:
            source = {"memory": MemoryEmbeddings.load(args.memory)}
        except (FileNotFoundError, ValueError) as error:
            parser.error(f"--memory: {error}")
    else:
        source = {"context": _read_text(parser, args.context, "--context")}
    if args.stream and len(args.question) > 1:
        parser.error("--stream prints one answer as it is generated: give one --question.")
    model = _load_model(parser, args)
    sampling = {"do_sample": False, "top_k": None, "top_p": None} if args.greedy else {}
    if args.stream:
        from transformers import TextStreamer

        sampling["streamer"] = TextStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
    with _warnings_as_lines(parser):
        try:
            answers = model.generate(
                **source, question=list(args.question), template=args.template, max_new_tokens=args.max_new_tokens,
                **sampling,
            )
        except ValueError as error:
            _fail(parser, str(error))
    if args.stream:
        return 0  # the streamer has printed the answer
    for question, answer in zip(args.question, answers):
        print(f"Q: {question}\nA: {answer}" if len(args.question) > 1 else answer)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `memcomp` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    delegated = delegated_commands() if argv else {}
    if argv and argv[0] in delegated:
        return _delegate(argv[0], delegated[argv[0]], argv[1:])
    args = build_parser().parse_args(argv)
    return args.handler(args.subparser, args)


if __name__ == "__main__":
    sys.exit(main())
