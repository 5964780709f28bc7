"""The verification track: tests of circuit verifiers on claims whose status is known.

A verifier (:mod:`mibench.verification.verifier`) accepts or rejects a claimed circuit seeing only
what a technique sees; :mod:`~mibench.verification.claims` builds claims of known status from the
truth; :mod:`~mibench.verification.track` runs every verifier on every claim and measures its
false-acceptance and false-rejection rates.

Verifiers are found like adapters: every ``verifiers/*.py`` beside the ``mibench`` package whose
name does not start with ``_``, each concrete ``Verifier`` subclass defined in it with a ``name``
(imported through the registry's file importer, so a broken file is a one-line error naming it).
"""
from __future__ import annotations

from pathlib import Path

VERIFIERS_DIR = Path(__file__).resolve().parents[2] / "verifiers"


def verifier_classes(folder: Path = VERIFIERS_DIR) -> dict[str, type]:
    """Every verifier class in ``folder`` by name; two with one name are an error."""
    from mibench.api import MibenchError
    from mibench.registry import _import_file, _Kind, _named_classes
    from mibench.verification.verifier import Verifier

    kind = _Kind("verifier", Verifier, lambda cls: {"name": cls.name}, reads_its_folder=False)
    found: dict[str, type] = {}
    for path in sorted(Path(folder).glob("*.py")):
        if path.name.startswith("_"):
            continue
        for name, cls in _named_classes(_import_file(path.resolve()), kind, path).items():
            if name in found:
                raise MibenchError(f"two verifiers are named {name!r}: {found[name].__module__} and {path}")
            found[name] = cls
    return found


def load_verifiers(text: str, folder: Path = VERIFIERS_DIR) -> list:
    """Verifier instances for ``all`` or comma-separated names (unknown names: did-you-mean error)."""
    from mibench.registry import unknown_name_error

    classes = verifier_classes(folder)
    if text == "all":
        return [classes[name]() for name in sorted(classes)]
    chosen = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        if name not in classes:
            raise unknown_name_error("verifier", name, list(classes))
        if name not in [v.name for v in chosen]:
            chosen.append(classes[name]())
    return chosen
