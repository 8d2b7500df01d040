"""The kvpress rows of `benchmarks.peers`, run inside `.venv-kvpress` (kvpress 0.5.x needs transformers < 5.3).

    .venv-kvpress/bin/python -m benchmarks._kvpress_worker SPEC.json OUT.json

SPEC (written by peers.py): model shape and seed, dtype, device, threads, warm-up/repeats, whether to
measure peak memory, the compression ratio, the jobs (`{"method": "kvpress_<press>", "length": n}`) and
per length the prompt token ids (`prefix`, `suffixes`). OUT: one result per job, plus the versions.
Press `none` is the same session without a press: the reused-KV baseline measured in this environment.
"""

from __future__ import annotations

import json
import sys

import torch

from benchmarks._sessions import build_lm, lm_session, reuse_prefix, run_job

PRESSES = {"expected_attention": "ExpectedAttentionPress", "snapkv": "SnapKVPress", "none": None}


def make_press(name: str, compression: float):
    """A kvpress press keeping 1/`compression` of the KV pairs (kvpress' `compression_ratio` is the share removed)."""
    if PRESSES.get(name, "") == "":
        raise ValueError(f"unknown press {name!r}; choose from {sorted(PRESSES)}.")
    if PRESSES[name] is None:
        return None
    import kvpress

    return getattr(kvpress, PRESSES[name])(compression_ratio=1 - 1 / compression)


def main(spec_path: str, out_path: str) -> int:
    import kvpress
    import transformers

    spec = json.loads(open(spec_path).read())
    torch.set_num_threads(spec["threads"])
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    lm = build_lm(spec["shape"], spec["seed"], dtype, device)
    results = []
    for job in spec["jobs"]:
        case = spec["cases"][str(job["length"])]
        prefix = torch.tensor([case["prefix"]], device=device)
        suffixes = [torch.tensor([s], device=device) for s in case["suffixes"]]
        press = make_press(job["method"].removeprefix("kvpress_"), spec["compression"])
        session = lm_session(reuse_prefix, lm, prefix, suffixes, device, press=press)
        result = run_job(session, device, spec["warmup"], spec["repeats"], spec["memory"])
        results.append({**job, **result})
    versions = {"kvpress": getattr(kvpress, "__version__", None) or _dist_version("kvpress"),
                "transformers": transformers.__version__, "torch": torch.__version__}
    with open(out_path, "w") as out:
        json.dump({"results": results, "versions": versions}, out)
    return 0


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
