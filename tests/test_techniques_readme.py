"""The minimal example in techniques/README.md must run and conform."""
import re
from pathlib import Path

from mibench.testing import check_technique

README = Path(__file__).parents[1] / "techniques" / "README.md"


def test_readme_example_passes_the_conformance_suite(tmp_path):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    path = tmp_path / "activation_norm_example.py"
    path.write_text(code)
    report = check_technique(str(path))
    assert report.ok, report.results
    assert report.counts["passed"] == 7
