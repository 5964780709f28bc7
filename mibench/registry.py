"""Discovery of cases and techniques, with "did you mean" errors.

* cases: every ``ground_truth/<case>/case.py``;
* techniques: every ``techniques/<name>.py`` not starting with ``_``, third-party adapters
  registered under the ``mibench.techniques`` entry-point group, and any ``path/to/file.py`` given
  directly.

Discovery imports each file and registers every concrete ``Technique`` (or ``Case``) subclass
defined in it that has a ``name``, with its metadata read from the class attributes. So a subclass
of another adapter (``class EAPIG20(EAPIG)`` with its own ``name``) is a technique of its own, a
class bound to a second name is still one technique, and a class imported from elsewhere belongs
to the file that defines it.

Importing an adapter costs seconds (torch), so what listing shows is kept in a metadata cache
(``MetadataCache``): ``mibench list`` imports only the files that changed since the last listing.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata as importlib_metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Iterator

import platformdirs

from mibench import __version__
from mibench.api import Case, MibenchError, Technique
from mibench.files import write_atomically

ENTRY_POINT_GROUP = "mibench.techniques"
CACHE_DIR_ENV = "MIBENCH_CACHE_DIR"


@dataclass(frozen=True)
class _Kind:
    """What is discovered: the base class, how its metadata is read, what its files depend on."""

    label: str
    base: type
    metadata: Callable[[type], dict[str, Any]]
    #: A case derives its truth (and so its granularities) from the data files beside case.py.
    reads_its_folder: bool


def _technique_metadata(cls: type[Technique]) -> dict[str, Any]:
    return {"class": cls.__qualname__, "name": cls.name, "version": cls.version,
            "granularity": cls.granularity, "granularities": list(cls.supported_granularities()),
            "signed": cls.signed, "cost": cls.cost, "description": cls.description,
            "citation": cls.citation}


def _case_metadata(cls: type[Case]) -> dict[str, Any]:
    return {"class": cls.__qualname__, "name": cls.name, "tier": cls.tier,
            "granularities": list(cls.granularities), "sizes": list(cls.sizes),
            "description": cls.description, "failure_mode": cls.failure_mode, "citation": cls.citation}


TECHNIQUES = _Kind("technique", Technique, _technique_metadata, reads_its_folder=False)
CASES = _Kind("case", Case, _case_metadata, reads_its_folder=True)


def unknown_name_error(kind: str, name: str, available: list[str]) -> MibenchError:
    close = difflib.get_close_matches(name, available, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return MibenchError(f"Unknown {kind} {name!r}.{hint} Available: {', '.join(sorted(available))}")


# --- importing files ----------------------------------------------------------------------------

def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MibenchError(f"the {package!r} package is not installed; reinstall mibench (`pip install -e .`)")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def _stamp(path: Path) -> list[int] | None:
    """Size and modification time: what says a file changed (None if it is gone)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _package_module_name(path: Path) -> str | None:
    """The import name of a file in ``techniques/`` or ``ground_truth/<case>/``, so that
    ``from techniques.eap_ig import EAPIG`` in another adapter gets the very class registered."""
    if path.parent == _package_dir("techniques"):
        return f"techniques.{path.stem}"
    if path.name == "case.py" and path.parent.parent == _package_dir("ground_truth"):
        return f"ground_truth.{path.parent.name}.case"
    return None


def _execute_file(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before executing: dataclasses and pickling look a class's module up
    spec.loader.exec_module(module)
    return module


#: Module name -> stamp of its file when this process imported it: a file edited since is imported
#: again, so a long-lived process (a notebook, the tests) never caches stale metadata for it.
_imported_stamps: dict[str, list[int] | None] = {}


def _import_file(path: Path) -> ModuleType:
    """Import an adapter or case file (once per version of the file); an error in it becomes a
    one-line MibenchError naming the file."""
    package_name = _package_module_name(path)
    name = package_name or f"mibench_file_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    stamp = _stamp(path)
    if name in sys.modules and _imported_stamps.setdefault(name, stamp) == stamp:
        return sys.modules[name]
    sys.modules.pop(name, None)
    try:
        module = importlib.import_module(name) if package_name else _execute_file(name, path)
    except Exception as exc:  # a broken adapter must give a one-line error, not a traceback
        sys.modules.pop(name, None)
        raise MibenchError(f"cannot import {path}: {type(exc).__name__}: {_one_line(exc)}") from exc
    _imported_stamps[name] = stamp
    return module


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _defined_in(module: ModuleType, base: type) -> list[type]:
    """Concrete subclasses of ``base`` defined in ``module`` (not imported into it), each once
    however many names it is bound to."""
    found = [obj for obj in vars(module).values()
             if inspect.isclass(obj) and issubclass(obj, base) and obj.__module__ == module.__name__
             and not inspect.isabstract(obj)]
    return list(dict.fromkeys(found))


def _named_classes(module: ModuleType, kind: _Kind, source: Path) -> dict[str, type]:
    """The classes of ``_defined_in`` by ``name``; a class without a name is a helper, not listed."""
    classes: dict[str, type] = {}
    for cls in _defined_in(module, kind.base):
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            continue
        if name in classes:
            raise _same_name_error(kind, name, f"{source} ({classes[name].__qualname__})",
                                   f"{source} ({cls.__qualname__})")
        classes[name] = cls
    return classes


def _same_name_error(kind: _Kind, name: str, first: str, second: str) -> MibenchError:
    # The usual cause: a subclass of another adapter that kept its parent's `name`.
    return MibenchError(f"two {kind.label}s are named {name!r}: {first} and {second}; "
                        f"give each its own `name`")


def _class_named(path: Path, kind: _Kind, name: str) -> type:
    classes = _named_classes(_import_file(path), kind, path)
    if name not in classes:
        raise MibenchError(f"{path} no longer defines a {kind.label} named {name!r}")
    return classes[name]


# --- the metadata cache -------------------------------------------------------------------------

def cache_dir() -> Path:
    """``$MIBENCH_CACHE_DIR``, else the user's cache folder (``$XDG_CACHE_HOME/mibench``, by
    default ``~/.cache/mibench``, on Linux)."""
    return Path(os.environ.get(CACHE_DIR_ENV) or platformdirs.user_cache_dir("mibench"))


def _inherited_files(classes: Iterable[type], base: type) -> set[Path]:
    """Files defining the classes these inherit from, up to ``base``: metadata such as ``cost`` can
    be inherited (``class EAPIG20(EAPIG)``), so a change there must refresh the entry too."""
    return {Path(inspect.getfile(ancestor)).resolve()
            for cls in classes for ancestor in cls.__mro__ if issubclass(ancestor, base)}


def _scan_file(path: Path, kind: _Kind) -> dict[str, Any]:
    """Import ``path``; the metadata of each class it defines and the files that metadata came from."""
    stamp = _stamp(path)  # taken before importing, so an edit made meanwhile counts as a change
    classes = _named_classes(_import_file(path), kind, path).values()
    data_files = [p for p in path.parent.iterdir() if p.is_file()] if kind.reads_its_folder else []
    files = {str(p): _stamp(p) for p in [*data_files, *_inherited_files(classes, kind.base)]}
    return {"files": {**files, str(path): stamp}, "classes": [kind.metadata(c) for c in classes]}


def _load_entry_point(entry_point: importlib_metadata.EntryPoint) -> type[Technique]:
    try:
        target = entry_point.load()
    except Exception as exc:  # a broken third-party adapter: one line, as for a file
        raise MibenchError(f"cannot load technique {entry_point.name!r} from entry point "
                           f"{entry_point.value}: {type(exc).__name__}: {_one_line(exc)}") from exc
    if not (inspect.isclass(target) and issubclass(target, Technique)) or inspect.isabstract(target):
        raise MibenchError(f"entry point {entry_point.name} = {entry_point.value} is not a concrete "
                           f"Technique subclass")
    return target


def _scan_entry_point(entry_point: importlib_metadata.EntryPoint) -> dict[str, Any]:
    target = _load_entry_point(entry_point)
    files = {str(p): _stamp(p) for p in _inherited_files([target], Technique)}
    return {"files": files, "classes": [_technique_metadata(target)]}


def _is_fresh(record: Any) -> bool:
    try:
        return (record["mibench"] == __version__ and bool(record["files"])
                and all(_stamp(Path(p)) == stamp for p, stamp in record["files"].items())
                and all(isinstance(meta["name"], str) for meta in record["classes"]))
    except (KeyError, TypeError, AttributeError):  # a damaged record is simply out of date
        return False


class MetadataCache:
    """The class metadata of each discovered file, so that listing need not import it.

    A record holds the size and mtime of every file its metadata came from (the file, the files
    of the classes it inherits from, a case's data files) and the mibench version; when any of
    them differs the file is imported again. This is only a cache: a missing, corrupt or
    unwritable cache file costs an import, never an error.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._records = self._read()
        self._changed = False

    def _read(self) -> dict[str, Any]:
        try:
            records = json.loads(self.path.read_text())
        except (OSError, ValueError):  # missing, unreadable or corrupt: start again
            return {}
        return records if isinstance(records, dict) else {}

    def classes(self, key: str, scan: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
        """The metadata stored under ``key``, refreshed by ``scan()`` when out of date."""
        record = self._records.get(key)
        if not _is_fresh(record):
            record = {**scan(), "mibench": __version__}
            self._records[key] = record
            self._changed = True
        return record["classes"]

    def save(self) -> None:
        if not self._changed:
            return
        try:
            write_atomically(self.path, json.dumps(self._records, default=str))
        except OSError:  # a read-only cache folder only costs speed
            pass


@contextmanager
def _metadata_cache() -> Iterator[MetadataCache]:
    cache = MetadataCache(cache_dir() / "registry.json")
    try:
        yield cache
    finally:  # keep what was scanned even if a broken file stops the listing
        cache.save()


# --- entries ------------------------------------------------------------------------------------

@dataclass
class Entry:
    name: str
    source: str  # the defining file's path, or an entry point "module:attr"
    meta: dict[str, Any] = field(default_factory=dict)  # class attributes (see _technique_metadata)


def _add(entries: dict[str, Entry], entry: Entry, kind: _Kind) -> None:
    if entry.name in entries:
        first = entries[entry.name]
        raise _same_name_error(kind, entry.name, f"{first.source} ({first.meta['class']})",
                               f"{entry.source} ({entry.meta['class']})")
    entries[entry.name] = entry


def _add_files(entries: dict[str, Entry], paths: Iterable[Path], kind: _Kind, cache: MetadataCache) -> None:
    for path in paths:
        for meta in cache.classes(str(path), partial(_scan_file, path, kind)):
            _add(entries, Entry(meta["name"], str(path), meta), kind)


# --- cases --------------------------------------------------------------------------------------

def case_entries(extra_folders: Iterable[Path] = ()) -> dict[str, Entry]:
    """Every case by name, from ``ground_truth/<case>/case.py`` and ``<folder>/<case>/case.py``
    for each of ``extra_folders``."""
    folders = [_package_dir("ground_truth"), *extra_folders]
    paths = [p.resolve() for folder in folders for p in sorted(Path(folder).glob("*/case.py"))]
    entries: dict[str, Entry] = {}
    with _metadata_cache() as cache:
        _add_files(entries, paths, CASES, cache)
    return entries


def load_case(name: str, extra_folders: Iterable[Path] = ()) -> Case:
    entries = case_entries(extra_folders)
    if name not in entries:
        raise unknown_name_error("case", name, list(entries))
    return _class_named(Path(entries[name].source), CASES, name)()


# --- techniques ---------------------------------------------------------------------------------

def technique_entries(extra_folders: Iterable[Path] = ()) -> dict[str, Entry]:
    """Every registered technique by name: the adapters in ``techniques/`` and in each of
    ``extra_folders``, then the ``mibench.techniques`` entry points."""
    folders = [_package_dir("techniques"), *extra_folders]
    paths = [p.resolve() for folder in folders for p in sorted(Path(folder).glob("*.py"))
             if not p.name.startswith("_")]
    entries: dict[str, Entry] = {}
    with _metadata_cache() as cache:
        _add_files(entries, paths, TECHNIQUES, cache)
        for entry_point in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
            _add(entries, _entry_point_entry(entry_point, cache), TECHNIQUES)
    return entries



def scores_signed(label: str) -> bool:
    """Whether the technique behind a run label (``name`` or ``name@granularity``) scores signed
    effects, which scoring ranks by magnitude; an adapter that is no longer registered is taken as
    signed, the safer reading."""
    from mibench.api import split_label

    entry = technique_entries().get(split_label(label)[0])
    return bool(entry.meta.get("signed", True)) if entry else True

def _entry_point_entry(entry_point: importlib_metadata.EntryPoint, cache: MetadataCache) -> Entry:
    # One key per environment: another virtualenv may have another version of the package.
    key = f"entry point {entry_point.name} = {entry_point.value} in {sys.prefix}"
    meta = cache.classes(key, partial(_scan_entry_point, entry_point))[0]
    if meta["name"] != entry_point.name:
        raise MibenchError(f"entry point {entry_point.name!r} ({entry_point.value}) is the technique "
                           f"{meta['name']!r}; register it under that name")
    return Entry(entry_point.name, entry_point.value, meta)


def _technique_from_file(path: Path) -> Technique:
    if not path.is_file() or path.suffix != ".py":
        raise MibenchError(f"technique file {str(path)!r} does not exist or is not a .py file")
    path = path.resolve()
    classes = _named_classes(_import_file(path), TECHNIQUES, path)
    if not classes:
        raise MibenchError(f"{path} defines no Technique subclass with a `name`")
    if len(classes) > 1:
        raise MibenchError(f"{path} defines several techniques ({', '.join(sorted(classes))}): pass "
                           f"one of these names instead of the path (with the file in techniques/), "
                           f"or keep one technique per file")
    return next(iter(classes.values()))()


def is_path(name_or_path: str) -> bool:
    """Whether ``--technique`` names an adapter file rather than a registered technique."""
    return name_or_path.endswith(".py") or "/" in name_or_path


def load_technique(name_or_path: str, extra_folders: Iterable[Path] = ()) -> Technique:
    """A technique by registered name, or by path to a ``.py`` file that defines one."""
    if is_path(name_or_path):
        return _technique_from_file(Path(name_or_path))
    entries = technique_entries(extra_folders)
    if name_or_path not in entries:
        raise unknown_name_error("technique", name_or_path, list(entries))
    entry = entries[name_or_path]
    if entry.source.endswith(".py"):
        return _class_named(Path(entry.source), TECHNIQUES, entry.name)()
    return _load_entry_point(importlib_metadata.EntryPoint(entry.name, entry.source, ENTRY_POINT_GROUP))()
