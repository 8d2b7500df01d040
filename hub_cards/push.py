"""`memcomp push` / `python -m hub_cards.push`: build a model or memory-dataset repo folder and upload it.

    python -m hub_cards.push --source CHECKPOINT --repo-id you/memcomp-7b-rl --stage rl --dry-run
    python -m hub_cards.push --source MEMORIES --repo-id you/memories --repo-type dataset \\
        --memory-model you/memcomp-7b-sft
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import LocalTokenNotFoundError
from huggingface_hub.utils import validate_repo_id

from .cards import DEFAULT_LICENSE, STAGES, check_stage
from .export import EXPORT_RECORD, export_dataset, export_model

DEFAULT_EXPORT_ROOT = "hub_export"
REPLACED_REMOTE_FILES = ["*"]
"""`upload_folder`'s `delete_patterns`: every remote file the pushed folder does not hold again is deleted (`*` spans
sub-folders; huggingface_hub always keeps `.gitattributes`), so a stale `model.safetensors` never sits beside new shards."""


def _arg(text: str, **kwargs):
    """A dataclass field whose `--help` line is `text`."""
    return field(metadata={"help": text}, **kwargs)


@dataclass
class PushArguments:
    """What to publish and where; one `--flag` per field (dashes or underscores)."""

    source: str = _arg("memcomp checkpoint folder (model) or precomputed-memory folder (dataset).")
    repo_id: str = _arg("Hub repository, e.g. your-name/memcomp-qwen2.5-7b-rl.")
    repo_type: Literal["model", "dataset"] = _arg("Publish a model or a dataset.", default="model")
    stage: str | None = _arg(f"Recipe stage of the checkpoint (models): {', '.join(STAGES)}.", default=None)
    dry_run: bool = _arg("Write the repo folder locally and list it; upload nothing.", default=False)
    output_dir: str | None = _arg(
        f"Folder to build the repo in (dry run: default {DEFAULT_EXPORT_ROOT}/<repo name>; push: a temp dir).",
        default=None,
    )
    overwrite: bool = _arg("Replace a non-empty output_dir.", default=False)
    public: bool = _arg("Create the repo public (repos are private by default).", default=False)
    base_model: str | None = _arg("Hub id of the wrapped base model, e.g. Qwen/Qwen2.5-7B (models).", default=None)
    datasets: list[str] = _arg("Hub ids of the training datasets (models).", default_factory=list)
    evaluation: str | None = _arg("Evaluation JSON whose results fill the model-index (models).", default=None)
    tokenizer: str | None = _arg("Tokenizer folder, when not saved with the checkpoint (models).", default=None)
    memory_model: str | None = _arg("Hub id of the model that computed the memories (datasets).", default=None)
    source_datasets: list[str] = _arg("Hub ids the memories were made from (datasets).", default_factory=list)
    license: str = _arg("Licence id; match the base model's licence.", default=DEFAULT_LICENSE)
    tags: list[str] = _arg("Extra Hub tags.", default_factory=list)
    commit_message: str = _arg("Commit message on the Hub.", default="Upload with memcomp push")

    def __post_init__(self):
        validate_repo_id(self.repo_id)
        if self.repo_type == "model" and self.stage is None:
            raise ValueError(f"--stage is required for a model: one of {', '.join(STAGES)} (the recipe stage).")
        if self.stage is not None:
            check_stage(self.stage)
        if self.repo_type == "dataset" and (self.stage or self.evaluation or self.base_model):
            raise ValueError("--stage, --evaluation and --base-model describe models; a dataset takes --memory-model.")
        if self.repo_type == "model" and (self.memory_model or self.source_datasets):
            raise ValueError("--memory-model and --source-datasets describe datasets; use --datasets for a model.")


def export(args: PushArguments, output_dir: str | os.PathLike) -> list[str]:
    """Write the repo folder `args` describes into `output_dir`; return its file list."""
    common = dict(repo_id=args.repo_id, license=args.license, tags=args.tags, overwrite=args.overwrite)
    if args.repo_type == "dataset":
        return export_dataset(
            args.source, output_dir, memory_model=args.memory_model, source_datasets=args.source_datasets, **common
        )
    return export_model(
        args.source, output_dir, stage=args.stage, tokenizer=args.tokenizer, base_model=args.base_model,
        datasets=args.datasets, evaluation=args.evaluation, **common,
    )


def require_token() -> str:
    """The saved or `HF_TOKEN` token; a `LocalTokenNotFoundError` says how to get one."""
    token = get_token()
    if token is None:
        raise LocalTokenNotFoundError(
            "no Hugging Face token found: run `hf auth login` or set HF_TOKEN to a token with write access "
            "(https://huggingface.co/settings/tokens), or use --dry-run to build the folder without pushing."
        )
    return token


def upload(
    folder: str | os.PathLike, repo_id: str, repo_type: str = "model", private: bool = True, commit_message: str = ""
) -> str:
    """Create the repo (private unless `private=False`; an existing repo keeps its visibility) and make it hold exactly
    `folder`, in one commit: remote files the folder lacks (an earlier push's weights, say) are deleted."""
    api = HfApi(token=require_token())
    repo = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    commit = api.upload_folder(
        folder_path=os.fspath(folder), repo_id=repo.repo_id, repo_type=repo_type, ignore_patterns=[EXPORT_RECORD],
        delete_patterns=list(REPLACED_REMOTE_FILES), commit_message=commit_message or "Upload with memcomp push",
    )
    return commit.commit_url


def network_errors() -> tuple[type[BaseException], ...]:
    """What a failed Hub call raises: OSError (requests, offline mode, `HfHubHTTPError`) or the httpx client's
    `HTTPError` (connection refused, timeouts), whichever flavour of httpx huggingface_hub uses."""
    errors: list[type[BaseException]] = [OSError]
    for name in ("httpx", "httpx2"):
        try:
            errors.append(importlib.import_module(name).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, build the folder, then list it (`--dry-run`) or upload it. Returns the exit status (2 on error)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(PushArguments, prog="memcomp push", description=__doc__.splitlines()[0])
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    except ValueError as error:
        parser.error(str(error))
    try:
        if args.dry_run:
            output = args.output_dir or Path(DEFAULT_EXPORT_ROOT) / args.repo_id.split("/")[-1]
            files = export(args, output)
            print(f"{args.repo_type} repo folder for {args.repo_id} written to {output} (dry run, nothing uploaded):")
            print("\n".join(f"  {name}" for name in files))
            return 0
        require_token()  # before the export, which takes minutes for a large model
        with tempfile.TemporaryDirectory(prefix="memcomp-push-") as staging:
            output = args.output_dir or Path(staging) / "repo"
            files = export(args, output)
            try:
                url = upload(output, args.repo_id, args.repo_type, not args.public, args.commit_message)
            except LocalTokenNotFoundError:
                raise
            except network_errors() as error:
                reason = " ".join(str(error).split()) or type(error).__name__
                print(
                    f"memcomp push: error: the upload to {args.repo_id} failed ({type(error).__name__}: {reason}); "
                    "check the network connection, HF_ENDPOINT and the token, then retry (nothing was published "
                    "unless the Hub shows a commit).",
                    file=sys.stderr,
                )
                return 2
        print(f"uploaded {len(files)} files to {args.repo_id} ({'public' if args.public else 'private'}): {url}")
        return 0
    except (ValueError, TypeError, OSError) as error:
        print(f"memcomp push: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
