"""Results made elsewhere and scored by mibench: an MIB graph file (``mibench score-graph --save``)
scored against a case's truth, kept with its source, shown on the leaderboard as imported, never
ranked with the suite's own runs (no model was run here, so nothing about its cost or its
faithfulness is known)."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mibench.api import MibenchError
from mibench.results import _utc_now, provenance

FOLDER = "imported"


@dataclass
class ImportedResult:
    label: str  # what the leaderboard calls it, e.g. "eap_ig (MIB)"
    source: str  # where the file comes from: repository, path, paper
    file: str  # the file's name as given to score-graph
    case: str
    case_tier: str
    seed: int
    size: str
    rule: str  # how node scores were derived from edge scores
    figures: dict[str, Any]  # granularity -> score_graph's figures
    mibench_commit: str | None = field(default_factory=lambda: provenance().mibench_commit)
    created_utc: str = field(default_factory=_utc_now)


def _file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") + ".json"


def save(results: str | Path, result: ImportedResult) -> Path:
    path = Path(results) / FOLDER / result.case / _file_name(result.label)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(result), indent=1, sort_keys=True))
    return path


def load(results: str | Path) -> list[ImportedResult]:
    """Every imported result under ``results``; a file that does not read is a one-line error."""
    out = []
    for path in sorted((Path(results) / FOLDER).glob("*/*.json")):
        try:
            out.append(ImportedResult(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError) as exc:
            raise MibenchError(f"{path} is not an imported result ({exc}); write it again with "
                               f"mibench score-graph --save") from None
    return out
