"""Discovery by import: adapter subclasses, aliases, several techniques in a file, entry points,
broken files, the listing's metadata cache, and cases."""
import json
import sys
import textwrap
from importlib import metadata as importlib_metadata
from pathlib import Path

import pytest

import techniques
from mibench import registry
from mibench.api import MibenchError
from mibench.registry import case_entries, load_case, load_technique, technique_entries

ADAPTER = '''
from mibench.api import Technique, make_scores


class {cls}(Technique):
    name = "{name}"
    description = "{description}"

    def attribute(self, view):
        return make_scores(dict.fromkeys(view.components(), 0.0))
'''
DLA = str(Path(techniques.__path__[0]).resolve() / "dla.py")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """A cold metadata cache for every test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("MIBENCH_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def adapters(tmp_path):
    """An extra adapter folder, discovered alongside techniques/."""
    folder = tmp_path / "adapters"
    folder.mkdir()
    return folder


@pytest.fixture
def imports(monkeypatch):
    """The names of the files discovery imports, in order."""
    seen = []
    real = registry._import_file

    def counting(path):
        seen.append(path.name)
        return real(path)

    monkeypatch.setattr(registry, "_import_file", counting)
    return seen


def write(folder: Path, filename: str, text: str) -> Path:
    path = folder / filename
    path.write_text(textwrap.dedent(text))
    return path


def adapter(cls: str, name: str, description: str = "test adapter") -> str:
    return ADAPTER.format(cls=cls, name=name, description=description)


# --- techniques ---------------------------------------------------------------------------------

def test_subclass_of_an_adapter_is_a_technique_of_its_own(adapters):
    from techniques.eap_ig import EAPIG

    path = write(adapters, "eap_ig_20.py", """
        from techniques.eap_ig import EAPIG


        class EAPIG20(EAPIG):
            name = "eap_ig_20"
            steps = 20
            cost = "22 forward + 20 backward (m = 20)"
        """)
    entries = technique_entries([adapters])
    assert entries["eap_ig"].source.endswith("techniques/eap_ig.py")  # imported, not re-registered
    assert entries["eap_ig_20"].source == str(path)
    assert entries["eap_ig_20"].meta["cost"].startswith("22 forward")  # its own
    assert entries["eap_ig_20"].meta["granularities"] == ["edge"]  # inherited
    variant = load_technique("eap_ig_20", [adapters])
    assert type(variant).__name__ == "EAPIG20" and isinstance(variant, EAPIG) and variant.steps == 20
    assert load_technique(str(path)).name == "eap_ig_20"


def test_subclass_that_keeps_its_parents_name_is_a_one_line_error(adapters):
    write(adapters, "eap_ig_20.py", """
        from techniques.eap_ig import EAPIG


        class EAPIG20(EAPIG):
            steps = 20
        """)
    with pytest.raises(MibenchError, match=r"two techniques are named 'eap_ig': .*eap_ig\.py \(EAPIG\) "
                                           r"and .*eap_ig_20\.py \(EAPIG20\); give each its own `name`"):
        technique_entries([adapters])


def test_a_class_bound_to_a_second_name_is_one_technique(adapters):
    path = write(adapters, "peek.py", adapter("PeekTruth", "peek_truth") + "\nPeekTruth2 = PeekTruth\n")
    assert type(load_technique(str(path))).__name__ == "PeekTruth"
    assert [e.name for e in technique_entries([adapters]).values() if e.source == str(path)] == ["peek_truth"]


def test_a_file_with_several_techniques_registers_each_but_is_no_path(adapters):
    path = write(adapters, "pair.py", adapter("First", "first") + adapter("Second", "second"))
    entries = technique_entries([adapters])
    assert entries["first"].source == entries["second"].source == str(path)
    assert type(load_technique("second", [adapters])).__name__ == "Second"
    with pytest.raises(MibenchError, match=r"defines several techniques \(first, second\): pass one of "
                                           r"these names instead of the path") as info:
        load_technique(str(path))
    assert "\n" not in str(info.value)


def test_unknown_names_suggest_close_ones():
    with pytest.raises(MibenchError, match="Unknown technique 'eap_gi'. Did you mean 'eap_ig'"):
        load_technique("eap_gi")
    with pytest.raises(MibenchError, match="Unknown case 'inducton'. Did you mean 'induction'?"):
        load_case("inducton")


@pytest.mark.parametrize("source, error", [
    ("from mibench.api import Technique\n\nclass Broken(Technique)\n", "SyntaxError: "),
    ("import not_an_installed_package\n", "ModuleNotFoundError: No module named 'not_an_installed_package'"),
    ("raise RuntimeError('first line\\nsecond line')\n", "RuntimeError: first line second line"),
], ids=["syntax", "missing-import", "multi-line-message"])
def test_a_broken_file_is_a_one_line_error_when_listed_or_loaded(adapters, source, error):
    path = write(adapters, "broken.py", source)
    for action in (lambda: technique_entries([adapters]), lambda: load_technique(str(path))):
        with pytest.raises(MibenchError) as info:
            action()
        message = str(info.value)
        assert message.startswith(f"cannot import {path}: ") and error in message and "\n" not in message


def test_entry_points_are_discovered_by_import(tmp_path, monkeypatch):
    write(tmp_path, "plugin_adapter.py", adapter("Plugin", "plugin", "from a package"))
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [importlib_metadata.EntryPoint("plugin", "plugin_adapter:Plugin", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(registry.importlib_metadata, "entry_points",
                        lambda group: points if group == registry.ENTRY_POINT_GROUP else [])
    entry = technique_entries()["plugin"]
    assert entry.source == "plugin_adapter:Plugin" and entry.meta["description"] == "from a package"
    assert type(load_technique("plugin")).__name__ == "Plugin"
    points[0] = importlib_metadata.EntryPoint("plugn", "plugin_adapter:Plugin", registry.ENTRY_POINT_GROUP)
    with pytest.raises(MibenchError, match="entry point 'plugn' .* is the technique 'plugin'; register it"):
        technique_entries()


# --- the metadata cache -------------------------------------------------------------------------

def test_listing_imports_only_what_changed(adapters, imports, monkeypatch):
    path = write(adapters, "mine.py", adapter("Mine", "mine", "first"))
    technique_entries([adapters])
    assert {"dla.py", "mine.py"} <= set(imports)  # cold cache: every file is imported
    imports.clear()
    assert technique_entries([adapters])["mine"].meta["description"] == "first"
    assert imports == []  # warm cache: nothing is
    path.write_text(adapter("Mine", "mine", "second, longer"))
    assert technique_entries([adapters])["mine"].meta["description"] == "second, longer"
    assert imports == ["mine.py"]
    imports.clear()
    monkeypatch.setattr(registry, "__version__", "99.0")  # another mibench may read other metadata
    technique_entries([adapters])
    assert {"dla.py", "mine.py"} <= set(imports)


def test_a_change_in_an_inherited_file_refreshes_the_subclass(tmp_path, adapters, imports, monkeypatch):
    library = tmp_path / "library"
    library.mkdir()
    parent = write(library, "parent_adapter.py", adapter("Parent", "parent", "old"))
    monkeypatch.syspath_prepend(str(library))
    child = write(adapters, "child.py", """
        from parent_adapter import Parent


        class Child(Parent):
            name = "child"
        """)
    assert technique_entries([adapters])["child"].meta["description"] == "old"
    parent.write_text(adapter("Parent", "parent", "new, longer"))
    for name, module in list(sys.modules.items()):  # as in a new process
        if getattr(module, "__file__", None) in (str(parent), str(child)):
            monkeypatch.delitem(sys.modules, name)
    imports.clear()
    assert technique_entries([adapters])["child"].meta["description"] == "new, longer"
    assert imports == ["child.py"]


@pytest.mark.parametrize("content", ['{"truncated": ', "[1, 2]", json.dumps({DLA: {"files": 3}})],
                         ids=["truncated", "not-a-mapping", "damaged-record"])
def test_a_corrupt_cache_is_rebuilt_silently(cache_dir, imports, content):
    cache_dir.mkdir()
    (cache_dir / "registry.json").write_text(content)
    assert technique_entries()["dla"].meta["cost"] == "1 forward"
    assert "dla.py" in imports
    assert json.loads((cache_dir / "registry.json").read_text())[DLA]["classes"][0]["name"] == "dla"


# --- cases --------------------------------------------------------------------------------------

def test_cases_are_discovered_by_import(tmp_path, imports):
    from ground_truth.induction.case import Induction

    induction = case_entries()["induction"]
    assert induction.meta["tier"] == "planted"
    assert induction.meta["granularities"] == list(Induction.granularities)
    assert type(load_case("induction")) is Induction  # imported under its package name, once
    cases = tmp_path / "cases"
    (cases / "tiny_variant").mkdir(parents=True)
    write(cases / "tiny_variant", "case.py", """
        from ground_truth.induction.case import Induction


        class TinyVariant(Induction):
            name = "tiny_variant"
            tier = "trap"
        """)
    data = write(cases / "tiny_variant", "circuit.yaml", "roles: {}\n")
    variant = case_entries([cases])["tiny_variant"]
    assert variant.meta["tier"] == "trap" and variant.meta["granularities"] == induction.meta["granularities"]
    assert isinstance(load_case("tiny_variant", [cases]), Induction)
    imports.clear()
    data.write_text("roles: {mover: [a1.h0]}\n")  # a case's truth, so its granularities, come from here
    case_entries([cases])
    assert imports == ["case.py"]
