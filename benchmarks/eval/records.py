"""Resumable evaluation records: an append-only JSONL file keyed by example id, system and config hash; a record
also carries its example's content digest, so an example whose data changed under the same id is run again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def config_hash(settings: dict) -> str:
    """Stable 12-hex digest of the settings that change an example's output (model, template, sampling...)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class RecordStore:
    """Per-example results in `path` (JSONL). A record is written as soon as its example is scored, so after a
    crash a rerun with the same config skips every finished example; records of other configs are kept but
    ignored. A torn last line (crash mid-write) is dropped on load.
    """

    def __init__(self, path: str | Path, config_hash: str):
        self.path = Path(path)
        self.config_hash = config_hash
        self._records: dict[tuple[str, str], dict] = {}
        if self.path.exists():
            text = self.path.read_text()
            if text and not text.endswith("\n"):
                text = text[: text.rfind("\n") + 1]
                self.path.write_text(text)
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("config_hash") == config_hash:
                    self._records[(record["id"], record["system"])] = record

    def done(self, example_id: str, system: str, example_hash: str | None = None) -> bool:
        """Whether the example has a record for `system` (made from the same content, when `example_hash` is given)."""
        record = self._records.get((example_id, system))
        return record is not None and (example_hash is None or record.get("example_hash") == example_hash)

    def append(self, record: dict) -> None:
        """Add one finished example (needs `id` and `system`) and flush it to disk at once."""
        if "id" not in record or "system" not in record:
            raise ValueError("a record needs 'id' and 'system' keys.")
        record = {**record, "config_hash": self.config_hash}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._records[(record["id"], record["system"])] = record

    def records(self, system: str | None = None) -> list[dict]:
        """This config's records, optionally for one system, in insertion order."""
        return [r for r in self._records.values() if system is None or r["system"] == system]

    def __len__(self) -> int:
        return len(self._records)
