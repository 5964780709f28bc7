"""Argument parsing shared by subcommands: seed ranges and comma-separated name lists."""
from __future__ import annotations

import fnmatch
from pathlib import Path

from mibench.api import MibenchError, split_label
from mibench.names import GRANULARITIES
from mibench.registry import case_entries, is_path, technique_entries, unknown_name_error

DEFAULT_RESULTS = "leaderboard/results"


def parse_seeds(text: str, what: str = "seed range") -> list[int]:
    """``0-4``, ``0,2,7`` or ``3`` (ranges inclusive)."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                lo_i, hi_i = int(lo), int(hi)
                if lo_i > hi_i or lo_i < 0:
                    raise ValueError
                seeds += list(range(lo_i, hi_i + 1))
            else:
                value = int(part)
                if value < 0:
                    raise ValueError
                seeds.append(value)
    except ValueError:
        raise MibenchError(f"bad {what} {text!r}; use e.g. 0-4, 0,2,7 or 3 "
                           f"(non-negative, low-high with low <= high)") from None
    return sorted(set(seeds))


def case_names(text: str | None) -> list[str]:
    """Case names, comma-separated; ``all``; shell-style patterns such as ``trap_*``."""
    available = list(case_entries())
    if text in (None, "all"):
        return sorted(available)
    chosen: list[str] = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        if any(c in name for c in "*?["):
            matches = sorted(fnmatch.filter(available, name))
            if not matches:
                raise MibenchError(f"no case matches {name!r}. Available: {', '.join(sorted(available))}")
            chosen += [m for m in matches if m not in chosen]
        elif name not in available:
            raise unknown_name_error("case", name, available)
        elif name not in chosen:
            chosen.append(name)
    return chosen


def technique_names(text: str) -> list[str]:
    """Registered names (``name@granularity`` picks one granularity), ``all``, or paths to adapter
    files (checked when loaded)."""
    available = list(technique_entries())
    if text == "all":
        return sorted(available)
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    for label in chosen:
        name, granularity = split_label(label)
        if not is_path(name) and name not in available:
            raise unknown_name_error("technique", name, available)
        if granularity is not None and granularity not in GRANULARITIES:
            raise MibenchError(f"unknown granularity {granularity!r} in {label!r}; "
                               f"expected one of {', '.join(GRANULARITIES)}")
    return chosen


def load_runs(labels: list[str]) -> list:
    """Run specs: every granularity a technique supports unless one is named (see RunSpec)."""
    from mibench.registry import load_technique
    from mibench.runner import RunSpec

    runs = []
    for label in labels:
        name, granularity = split_label(label)
        technique = load_technique(name)
        # how a worker loads it again: the name, or the file's absolute path (cwd may differ there)
        ref = str(Path(name).resolve()) if is_path(name) else name
        supported = technique.supported_granularities()
        if granularity is not None and granularity not in supported:
            raise MibenchError(f"technique {technique.name!r} does not score {granularity!r}; "
                               f"it scores {', '.join(supported)}")
        if granularity:
            runs.append(RunSpec(technique, granularity, ref=ref))
        else:
            runs += [RunSpec(technique, g, asked=g == technique.granularity, ref=ref) for g in supported]
    return runs
