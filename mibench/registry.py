"""Discovery of cases and techniques, with "did you mean" errors.

* cases: every ``ground_truth/<case>/case.py``;
* techniques: every ``techniques/<name>.py``, third-party adapters registered under the
  ``mibench.techniques`` entry-point group, and any ``path/to/file.py`` given directly.

Listing reads the class-level metadata (``name = "…"`` and friends) from the source with ``ast``
rather than importing it, so ``mibench list`` never pays for torch; targets load lazily.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from mibench.api import Case, MibenchError, Technique

ENTRY_POINT_GROUP = "mibench.techniques"


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MibenchError(f"the {package!r} package is not installed; reinstall mibench (`pip install -e .`)")
    return Path(list(spec.submodule_search_locations)[0])


def read_metadata(path: Path, base: str) -> dict[str, Any] | None:
    """Literal class attributes of the first class in ``path`` that subclasses ``base``."""
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
        if base not in bases:
            continue
        meta: dict[str, Any] = {"class": node.name, "doc": ast.get_docstring(tree) or ""}
        for stmt in node.body:
            target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else \
                getattr(stmt, "target", None)
            value = getattr(stmt, "value", None)
            if isinstance(target, ast.Name) and value is not None:
                try:
                    meta[target.id] = ast.literal_eval(value)
                except ValueError:
                    pass
        return meta
    return None


def _load_module(path: Path, prefix: str):
    module_name = f"{prefix}_{path.parent.name if path.name == 'case.py' else path.stem}"
    if module_name in sys.modules and getattr(sys.modules[module_name], "__file__", None) == str(path):
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise MibenchError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a broken adapter must give a one-line error, not a traceback
        sys.modules.pop(module_name, None)
        raise MibenchError(f"cannot import {path}: {type(exc).__name__}: {exc}") from exc
    return module


def _classes_in(module, base: type) -> list[type]:
    return [obj for _, obj in inspect.getmembers(module, inspect.isclass)
            if issubclass(obj, base) and obj is not base and obj.__module__ == module.__name__
            and not inspect.isabstract(obj)]


def unknown_name_error(kind: str, name: str, available: list[str]) -> MibenchError:
    close = difflib.get_close_matches(name, available, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return MibenchError(f"Unknown {kind} {name!r}.{hint} Available: {', '.join(sorted(available))}")


@dataclass
class Entry:
    name: str
    source: str  # a file path or an entry point "module:attr"
    meta: dict[str, Any] = field(default_factory=dict)


# --- cases --------------------------------------------------------------------------------------

def case_entries() -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for path in sorted(_package_dir("ground_truth").glob("*/case.py")):
        meta = read_metadata(path, "Case")
        if meta and "name" in meta:
            out[meta["name"]] = Entry(meta["name"], str(path), meta)
    return out


def load_case(name: str) -> Case:
    entries = case_entries()
    if name not in entries:
        raise unknown_name_error("case", name, list(entries))
    module = _load_module(Path(entries[name].source), "mibench_case")
    classes = [c for c in _classes_in(module, Case) if getattr(c, "name", None) == name]
    if not classes:
        raise MibenchError(f"{entries[name].source} defines no Case subclass named {name!r}")
    return classes[0]()


# --- techniques ---------------------------------------------------------------------------------

def technique_entries() -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for path in sorted(_package_dir("techniques").glob("*.py")):
        if path.name.startswith("_"):
            continue
        meta = read_metadata(path, "Technique")
        if meta and "name" in meta:
            out[meta["name"]] = Entry(meta["name"], str(path), meta)
    for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        out.setdefault(ep.name, Entry(ep.name, ep.value, {"name": ep.name}))
    return out


def _technique_from_file(path: Path) -> Technique:
    if not path.is_file():
        raise MibenchError(f"technique file {str(path)!r} does not exist")
    module = _load_module(path.resolve(), "mibench_technique")
    classes = _classes_in(module, Technique)
    if len(classes) != 1:
        found = ", ".join(c.__name__ for c in classes) or "none"
        raise MibenchError(f"{path} must define exactly one Technique subclass (found {found})")
    return classes[0]()


def load_technique(name_or_path: str) -> Technique:
    """A technique by registered name, or by path to a ``.py`` file that defines one."""
    if name_or_path.endswith(".py") or "/" in name_or_path:
        return _technique_from_file(Path(name_or_path))
    entries = technique_entries()
    if name_or_path not in entries:
        raise unknown_name_error("technique", name_or_path, list(entries))
    source = entries[name_or_path].source
    if source.endswith(".py"):
        return _technique_from_file(Path(source))
    try:
        target = importlib_metadata.EntryPoint(name_or_path, source, ENTRY_POINT_GROUP).load()
    except Exception as exc:
        raise MibenchError(f"cannot load technique {name_or_path!r} from entry point {source}: {exc}") from exc
    if not (inspect.isclass(target) and issubclass(target, Technique)):
        raise MibenchError(f"entry point {source} is not a Technique subclass")
    return target()
