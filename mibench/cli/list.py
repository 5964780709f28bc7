"""``mibench list cases|techniques``: what is registered, from the registry's metadata cache (so
only files changed since the last listing are imported)."""
from __future__ import annotations

from tabulate import tabulate

from mibench.registry import case_entries, technique_entries

HELP = "list the known cases or the registered techniques"


def add_arguments(parser) -> None:
    parser.add_argument("what", choices=["cases", "techniques"], help="what to list")


def main(args) -> int:
    if args.what == "cases":
        rows = [[e.name, e.meta["tier"], ", ".join(e.meta["granularities"]), ", ".join(e.meta["sizes"]),
                 e.meta["description"], e.meta["citation"]]
                for e in case_entries().values()]
        print(tabulate(rows, headers=["case", "tier", "granularities", "sizes", "circuit", "models"]))
    else:
        rows = [[e.name, ", ".join(e.meta["granularities"]), e.meta["cost"], e.meta["description"],
                 e.source if not e.source.endswith(".py") else ""]
                for e in technique_entries().values()]
        print(tabulate(rows, headers=["technique", "granularities", "cost", "what it does", "entry point"]))
    return 0
