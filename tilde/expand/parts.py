"""Resumable output of an expansion job: numbered part files beside the output, then one atomic
concatenation.

``<output>.partial/`` holds ``job.json`` (what the job is, so a different job never resumes
into it) and, per finished chunk of passages, ``part-NNNNNNNN.stats.json`` then
``part-NNNNNNNN.jsonl``, each written atomically; a part counts as done once its ``.jsonl``
exists. A crash loses at most the chunk in progress, and since a chunk's lines depend only on
its passages, a resumed job writes the same bytes an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from tilde.io import atomic_path, atomic_write_text, open_text

logger = logging.getLogger(__name__)

__all__ = ["JobMismatchError", "PartStats", "PartStore", "job_sidecar_path", "partial_dir"]


class JobMismatchError(ValueError):
    """Existing partial or finished output belongs to a different job."""


@dataclass(frozen=True)
class PartStats:
    passages: int = 0
    terms: int = 0  # expansion ids added, summed over passages
    truncated: int = 0  # passages longer than max_length - 2 tokens (their tail is not in the output)
    no_terms: int = 0  # passages that got no expansion id at all

    def plus(self, other: PartStats) -> PartStats:
        return PartStats(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))

    @property
    def mean_terms(self) -> float:
        return self.terms / self.passages if self.passages else 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PartStats:
        return cls(**{k: int(data[k]) for k in asdict(cls())})


def partial_dir(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def job_sidecar_path(output: Path) -> Path:
    """Where a finished job records its collection slice and statistics (used to concatenate
    shards and to tell whether an existing output is up to date)."""
    return output.with_name(output.name + ".job.json")


def diff_keys(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))


class PartStore:
    def __init__(self, output: Path, identity: Mapping[str, Any]) -> None:
        self.output = output
        self.dir = partial_dir(output)
        self.identity = json.loads(json.dumps(dict(identity)))  # normalised as it reads back
        self.dir.mkdir(parents=True, exist_ok=True)
        state = self.dir / "job.json"
        if state.exists():
            found = json.loads(state.read_text("utf-8"))
            if found != self.identity:
                raise JobMismatchError(
                    f"{self.dir} holds an unfinished expansion of a different job (differs in: "
                    f"{', '.join(diff_keys(found, self.identity))}). Re-run with the same arguments "
                    f"to resume, or pass --overwrite to start over."
                )
        else:
            atomic_write_text(state, json.dumps(self.identity, indent=2, sort_keys=True) + "\n")

    def _path(self, k: int, suffix: str) -> Path:
        return self.dir / f"part-{k:08d}{suffix}"

    def completed(self) -> int:
        """Consecutive finished parts from 0."""
        k = 0
        while self._path(k, ".jsonl").exists():
            k += 1
        return k

    def write(self, k: int, lines: Sequence[str], stats: PartStats) -> None:
        # Stats first: a part whose .jsonl exists always has its stats.
        atomic_write_text(self._path(k, ".stats.json"), json.dumps(asdict(stats)) + "\n")
        with atomic_path(self._path(k, ".jsonl")) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(lines)

    def stats(self) -> PartStats:
        total = PartStats()
        for k in range(self.completed()):
            total = total.plus(PartStats.from_dict(json.loads(self._path(k, ".stats.json").read_text("utf-8"))))
        return total

    def parts(self) -> Iterator[Path]:
        for k in range(self.completed()):
            yield self._path(k, ".jsonl")

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def copy_files(sources: Sequence[Path] | Iterator[Path], dest: IO[bytes]) -> None:
    for src in sources:
        with open_text(src, "rb") as f:
            shutil.copyfileobj(f, dest, 1 << 20)
