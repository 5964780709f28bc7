"""One typed, versioned record per (technique, case, seed) run, written atomically.

Layout: ``{results}/{technique}/{case}/seed{seed}.json``. Each file carries the provenance needed
to trust it (versions, the mibench commit, when it ran, truth hash, prompt counts, runtime,
passes) and the technique's full scores, so the report is a pure function of these files.
"""
from __future__ import annotations

import functools
import json
import math
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from mibench import __version__, metrics
from mibench.files import write_atomically
from mibench.api import DEFAULT_SIZE, MibenchError

SCHEMA_VERSION = 5  # 2: provenance (commit, run time, Python / torch / transformer-lens versions); 3: prompt_sample; 4: size;
#  5: runs in isolated workers (the run seed is derived from, not equal to, the instance seed), seeds_private,
#  machine, certifying_s
STATUSES = ("ok", "error", "skipped", "uncertified")


@dataclass(frozen=True)
class Provenance:
    """What produced a result, besides the technique and case: the same for every run of a process."""

    mibench_commit: str | None  # None outside a git checkout of mibench
    python_version: str
    torch_version: str | None  # None if not installed
    transformer_lens_version: str | None
    machine: str  # what a runtime was measured on: architecture, cores, CPU model


def _machine() -> str:
    """``x86_64, 2 cores, <CPU model>``: enough to say where a runtime comes from, nothing
    identifying (no host name)."""
    import os

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = ", " + line.split(":", 1)[1].strip()
                break
    except OSError:
        model = f", {platform.processor()}" if platform.processor() else ""
    return f"{platform.machine()}, {os.cpu_count()} cores{model}"


def _git_commit(package: Path) -> str | None:
    """HEAD of the git checkout holding ``package``, with ``-dirty`` appended when tracked code
    (anything but ``leaderboard/``) differs from it; None when there is no checkout or git is
    missing. A result computed by uncommitted code must not claim the commit it started from.

    The checkout must be the package's own (its top level is the package's parent): mibench
    installed into a site-packages folder that happens to lie inside another repository must not
    report that repository's commit."""
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=package,
                             capture_output=True, text=True, timeout=10, check=True).stdout.splitlines()
        if len(out) != 2 or Path(out[0]).resolve() != package.resolve().parent:
            return None
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                  ":(exclude)leaderboard"], cwd=out[0], capture_output=True,
                                 text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[1] + ("-dirty" if changed else "")


def _installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def provenance() -> Provenance:
    """This process's provenance, computed once (one ``git`` call); never raises."""
    return Provenance(mibench_commit=_git_commit(Path(__file__).parent),
                      python_version=platform.python_version(),
                      torch_version=_installed_version("torch"),
                      transformer_lens_version=_installed_version("transformer-lens"),
                      machine=_machine())


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunRecord:
    technique: str
    case: str
    seed: int
    granularity: str
    status: str
    technique_version: str = ""
    case_version: str = ""
    case_tier: str = ""
    truth_hash: str = ""
    n_prompts: int = 0
    n_train_prompts: int = 0
    prompt_sample: int = 0  # which independent prompt sample of the instance (0: the main tables')
    size: str = DEFAULT_SIZE  # which model size of the case (mibench.api.SIZES)
    seeds_private: bool = False  # the instance was built from a secret salt and ``seed`` (--seed-salt)
    runtime_s: float = 0.0  # the technique's own time in its worker
    certifying_s: float = 0.0  # building and certifying the instance, once per (case, seed) for all its runs
    forward_passes: float = 0.0
    backward_passes: float = 0.0
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    truth_labels: dict[str, str] = field(default_factory=dict)  # what the scores were scored against
    shape: dict[str, int] = field(default_factory=dict)  # n_layers, n_heads, d_mlp of the model
    certificate: dict[str, Any] | None = None
    mibench_version: str = __version__
    # Provenance, filled in when the record is made (runner.run_one makes it as the run starts).
    mibench_commit: str | None = field(default_factory=lambda: provenance().mibench_commit)
    python_version: str = field(default_factory=lambda: provenance().python_version)
    torch_version: str | None = field(default_factory=lambda: provenance().torch_version)
    transformer_lens_version: str | None = field(default_factory=lambda: provenance().transformer_lens_version)
    machine: str = field(default_factory=lambda: provenance().machine)
    created_utc: str = field(default_factory=_utc_now)  # ISO 8601
    schema_version: int = SCHEMA_VERSION

    def summary(self) -> dict[str, Any]:
        """The flat view printed by ``mibench run --json``: the run, every metric of the table
        (None where not defined or not computed, so every line has the same keys), the trap
        verdict and the passes."""
        return {"technique": self.technique, "case": self.case, "seed": self.seed,
                "granularity": self.granularity, "status": self.status,
                "runtime_s": self.runtime_s, "error": self.error,
                **{m.name: self.metrics.get(m.name) for m in metrics.METRICS},
                "fooled": self.metrics.get("fooled"),
                "forward_passes": self.forward_passes, "backward_passes": self.backward_passes}

    def to_json(self) -> dict[str, Any]:
        return _clean(asdict(self))


def _clean(value: Any) -> Any:
    """JSON has no NaN: store non-finite floats as null so every file parses everywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def result_path(root: str | Path, technique: str, case: str, seed: int, sample: int = 0,
                size: str = DEFAULT_SIZE) -> Path:
    """``{root}/{technique}/{case}/{size}/seed{seed}.json``; other prompt samples
    ``seed{seed}-prompts{j}.json``."""
    name = f"seed{seed}.json" if not sample else f"seed{seed}-prompts{sample}.json"
    return Path(root) / technique / case / size / name


def write_record(root: str | Path, record: RunRecord) -> Path:
    """Write atomically: a temporary file in the same folder, then rename over the target, so a
    crash never leaves a half-written result and never destroys the previous one."""
    text = json.dumps(record.to_json(), indent=1, sort_keys=True)
    path = result_path(root, record.technique, record.case, record.seed, record.prompt_sample, record.size)
    return write_atomically(path, text + "\n")


@dataclass
class Excluded:
    path: str
    reason: str


class UnusableRecord(MibenchError):
    """A result file that is not a record of this schema; ``reason`` says why (without the path)."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"result file {str(path)!r} is unusable: {reason}; re-run it with `mibench run`")
        self.path, self.reason = str(path), reason


def load_record(path: str | Path) -> RunRecord:
    """One result file, checked: readable JSON, this schema version, exactly the record's fields.
    Anything else raises :class:`UnusableRecord`, a one-line MibenchError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UnusableRecord(path, f"unreadable JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        version = data.get("schema_version") if isinstance(data, dict) else None
        raise UnusableRecord(path, f"schema_version {version!r}, expected {SCHEMA_VERSION}")
    known = set(RunRecord.__dataclass_fields__)
    unknown, missing = set(data) - known, known - set(data)
    if unknown:
        raise UnusableRecord(path, f"unknown fields {sorted(unknown)}")
    # write_record writes every field; a missing one must not be filled in with a default (the
    # provenance defaults would describe this process, not the run)
    if missing:
        raise UnusableRecord(path, f"missing fields {sorted(missing)}")
    return RunRecord(**data)


def load_records(root: str | Path) -> tuple[list[RunRecord], list[Excluded]]:
    """Every usable record under ``root`` plus the files excluded and why (never silently)."""
    root = Path(root)
    if not root.is_dir():
        raise MibenchError(f"results folder {str(root)!r} does not exist; run `mibench run` first "
                           f"or pass --results DIR")
    records, excluded = [], []
    # {technique}/{case}/{size}/seed*.json; files of the layout before sizes ({technique}/{case}/
    # seed*.json) are found too and excluded for their schema version
    for path in sorted([*root.glob("*/*/*/seed*.json"), *root.glob("*/*/seed*.json")]):
        try:
            records.append(load_record(path))
        except UnusableRecord as exc:
            excluded.append(Excluded(exc.path, exc.reason))
    return records, excluded
