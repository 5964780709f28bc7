"""The leaderboard report: byte-identical Markdown, a self-contained HTML page that a headless
Chromium renders without errors and with its figures, and the terminal drill-down."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mibench.report.html import render_report
from mibench.report.markdown import render_leaderboard
from mibench.results import load_records

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    proc = subprocess.run([sys.executable, "-m", "mibench.cli.main", "run", "--technique",
                           "activation_patching,attribution_patching,dla,random", "--case", "induction,ioi", "--seeds", "0-1",
                           "--size", "small", "--results", str(root), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return root


def test_markdown_is_a_pure_function_of_the_results(results):
    records, excluded = load_records(results)
    first = render_leaderboard(records, excluded)
    again = render_leaderboard(*load_records(results))
    assert first == again
    headings = [line for line in first.splitlines() if line.startswith("## ")]
    # decision first, then the rankings; the flagship case leads the cases
    assert headings[:3] == ["## Which technique to use", "## Rankings", "## Chance levels"]
    assert headings.index("## Case `ioi` (planted)") < headings.index("## Case `induction` (planted)")
    for heading in ("## Ground-truth certificates", "## Agreement between techniques"):
        assert heading in headings
    # provenance stays in the result files, except the commit, which the files fix
    assert not any(r.created_utc in first for r in records)
    assert f"All results come from mibench commit `{records[0].mibench_commit[:12]}`." in first


def test_html_is_self_contained_and_has_its_figures(results):
    page = render_report(*load_records(results))
    assert "<script" not in page and "@import" not in page and "url(http" not in page
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(link.startswith(("#", "data:")) for link in links)  # nothing to fetch
    assert page.count("<svg") >= 5  # cost/quality + per case heat map and faithfulness curves
    assert "backup_name_mover" in page  # roles outlined and listed


#: set by .ci/run, which installs the browser: there a missing browser fails the test instead of
#: skipping it, so CI never passes without having rendered the report
BROWSER_REQUIRED = "MIBENCH_REQUIRE_BROWSER"


def test_browser_renders_the_report(results, tmp_path):
    """Headless Chromium (Debian's chromium + chromium-driver, installed by .ci/run) loads the
    page with no console errors, shows its figures, and takes a screenshot. Skipped, with the
    reason, on a machine without them unless MIBENCH_REQUIRE_BROWSER is set."""
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        missing = "install Debian's chromium and chromium-driver (see .ci/run)"
        if os.environ.get(BROWSER_REQUIRED):
            pytest.fail(f"{BROWSER_REQUIRED} is set but no browser is installed: {missing}")
        pytest.skip(f"no headless browser: {missing} to render the report")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    page = tmp_path / "report.html"
    page.write_text(render_report(*load_records(results)))
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1300,2000"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(page.as_uri())
        assert driver.title == "mibench report"
        figures = driver.execute_script(
            "return [...document.querySelectorAll('figure svg')].map(s => s.getBoundingClientRect().height)")
        assert len(figures) >= 5 and all(h > 50 for h in figures)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        driver.quit()


def test_drill_down(results):
    proc = subprocess.run([sys.executable, "-m", "mibench.cli.main", "report", "--technique", "dla",
                           "--case", "ioi", "--seed", "1", "--size", "small", "--results", str(results)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for text in ("Ranked components", "name_mover", "◀ truth", "Missed truth components",
                 "Certificate (pass)", "backup compensation"):
        assert text in proc.stdout
    assert "by |score|: the technique's scores are signed effects" in proc.stdout  # dla is signed


def test_drill_down_ranks_an_unsigned_technique_by_its_score(results, tmp_path):
    """random is unsigned: its listing follows the score (as scoring ranks it), not |score|."""
    import json

    path = results / "random" / "induction" / "small" / "seed0.json"
    record = json.loads(path.read_text())
    lowest = min(record["scores"], key=record["scores"].get)
    record["scores"][lowest] = -1e6  # the largest magnitude, yet the lowest score
    copy = tmp_path / "random" / "induction" / "small" / "seed0.json"
    copy.parent.mkdir(parents=True)
    copy.write_text(json.dumps(record))
    proc = subprocess.run([sys.executable, "-m", "mibench.cli.main", "report", "--technique", "random",
                           "--case", "induction", "--seed", "0", "--size", "small", "--results",
                           str(tmp_path), "--top", "1000"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ranked = [line.split()[1] for line in proc.stdout.splitlines() if re.match(r"\s*\d+\s+\S", line)]
    assert "Ranked components (by score)" in proc.stdout and ranked[-1] == lowest


def test_drill_down_unknown_technique(results):
    proc = subprocess.run([sys.executable, "-m", "mibench.cli.main", "report", "--technique", "dlaa",
                           "--case", "ioi", "--results", str(results)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Did you mean 'dla'" in proc.stderr


def test_commits_note_names_each_commit_once():
    from mibench.report.summary import commits_note
    from mibench.results import RunRecord

    def run(commit):
        return RunRecord(technique="dla", case="ioi", seed=0, granularity="node", status="ok",
                         mibench_commit=commit, created_utc="2020-01-01T00:00:00+00:00")

    assert commits_note([run("a" * 40), run("a" * 40)]) == \
        "All results come from mibench commit `aaaaaaaaaaaa`. Model size: small."
    assert commits_note([run("b" * 40), run(None), run("b" * 40)]) == (
        "Results come from a mibench copy outside git (1 run), mibench commit `bbbbbbbbbbbb` (2 runs). "
        "Model size: small.")


def _record(tech, case, seed, granularity="node", tier="planted", **metrics):
    from mibench.results import RunRecord

    return RunRecord(technique=tech, case=case, seed=seed, granularity=granularity, status="ok",
                     case_tier=tier, metrics=metrics)


def test_traps_table_rows_feed_markdown_and_html():
    """A trap cell leads with the verdict and shows the figure it rests on: F1@k (never an AUROC
    that rounds to 1.00 beside "fooled"), or the answer-layer error at layer granularity."""
    from mibench.report import html, markdown

    records = [_record("dla", "trap_x", 0, tier="trap", auroc=0.999, f1_at_k=0.8, fooled=True),
               _record("dla", "trap_x", 1, tier="trap", auroc=0.999, f1_at_k=0.8, fooled=True),
               _record("logit_lens", "trap_x", 0, "layer", "trap", auroc=1.0, f1_at_k=1.0,
                       answer_layer_error=2, fooled=True),
               _record("patching", "trap_x", 0, tier="trap", auroc=1.0, f1_at_k=1.0, fooled=False)]
    headers, rows = markdown.traps_rows(records)
    assert headers == ["technique", "trap_x (trap_x)"]  # an unregistered case has no failure mode to name
    assert rows == [["dla", "fooled 2/2 (F1@k 0.80)"], ["logit_lens", "fooled 1/1 (answer layer off by 2.0)"],
                    ["patching", "robust 0/1 (F1@k 1.00)"]]
    assert markdown.traps_table(records).splitlines()[2].startswith("| dla")
    assert "<td>fooled 2/2 (F1@k 0.80)</td>" in html.render_report(records, [])
    planted = _record("dla", "ioi", 0)
    assert markdown.traps_rows([planted]) is None and markdown.traps_table([planted]) is None


def test_rankings_sort_by_the_primary_score_and_set_few_case_labels_apart():
    from mibench.report import ranking

    records = []
    for seed in range(6):
        for i, case in enumerate(["a", "b", "c"]):
            records += [_record("good", case, seed, auroc=0.9 + 0.01 * i),
                        _record("random", case, seed, auroc=0.5 + 0.01 * ((seed + i) % 3 - 1)),
                        _record("middling", case, seed, auroc=0.7)]
        records.append(_record("narrow@site", "a", seed, "site", auroc=1.0))
    node, site = ranking.rankings(records)
    assert [r.technique for r in node.ranked] == ["good", "middling", "random"]
    assert not site.ranked and [r.technique for r in site.few_cases] == ["narrow@site"]
    # 18 instances, every difference of one sign: each neighbour and each test against random holds
    assert [t.verdict for t in node.neighbours] == ["good better", "middling better"]
    assert node.beats_baseline("good") and node.beats_baseline("middling")
    assert node.leaders() == ["good"]
    lines = ranking.use_when(node)
    assert lines[0].startswith("**Best at node level:** `good`")


def test_paired_test_on_known_inputs():
    from mibench.report import stats

    # six instances, a ahead on every one: the exact two-sided Wilcoxon p is 2 / 2^6
    t = stats.paired("a", {i: 1.0 + i for i in range(6)}, "b", {i: 0.5 * i for i in range(6)})
    assert t.n == 6 and t.statistic == 0 and t.p == pytest.approx(2 / 64)
    assert t.mean_difference == pytest.approx(np.mean([1 + 0.5 * i for i in range(6)]))
    # A12 counts every a value (1..6) against every b value (0, 0.5, ..., 2.5): a = 1 ties b = 1
    # and loses to 1.5, 2, 2.5; a = 2 ties b = 2 and loses to 2.5; the other 30 pairs are wins
    assert t.a12 == pytest.approx((30 + 0.5 * 2) / 36)
    # lower is better: the same data negated flips the verdict's direction, not its strength
    flipped = stats.paired("a", {i: 1.0 + i for i in range(6)}, "b", {i: 0.5 * i for i in range(6)},
                           higher_is_better=False)
    assert flipped.p == t.p and flipped.mean_difference == -t.mean_difference
    # identical values: nothing to test, never "better"
    same = stats.adjust([stats.paired("a", {0: 1.0, 1: 2.0}, "b", {0: 1.0, 1: 2.0})])[0]
    assert same.p == 1.0 and same.verdict == "not distinguishable"
    # Holm: sorted p 0.01, 0.02, 0.04 times 3, 2, 1 → 0.03, 0.04, 0.04 (monotone), in input order
    assert stats.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert stats.adjust([t])[0].verdict == "a better"  # alone, 0.031 < 0.05
    assert stats.adjust([t, t])[0].verdict == "not distinguishable"  # two claims: 0.0625
    # the verdict follows the signed ranks the test detects, not the mean: b wins 19 instances by
    # 0.01 to 0.019, a one by 1.0, so the mean favours a but the signed-rank sums favour b
    mostly_b = stats.paired("a", {i: 1.0 if i == 0 else 0.0 for i in range(20)},
                            "b", {i: 0.0 if i == 0 else 0.01 + i / 2000 for i in range(20)})
    assert mostly_b.mean_difference > 0 and mostly_b.direction == -1
    assert stats.adjust([mostly_b])[0].verdict == "b better"


def test_committed_tables_do_not_change_when_only_runtimes_do(results):
    """Runtimes depend on the machine and its load: they live in RUNTIMES.md, which says the
    machine, never in LEADERBOARD.md or report.html."""
    import dataclasses

    from mibench.report.markdown import render_runtimes

    records, excluded = load_records(results)
    slower = [dataclasses.replace(r, runtime_s=r.runtime_s * 3 + 1, certifying_s=r.certifying_s + 5)
              for r in records]
    assert render_leaderboard(records, excluded) == render_leaderboard(slower, excluded)
    assert render_report(records, excluded) == render_report(slower, excluded)
    runtimes = render_runtimes(records)
    assert records[0].machine in runtimes and runtimes != render_runtimes(slower)


def test_display_fixes_say_what_was_measured():
    """Certificate rows say how many truth nodes the necessity check ablated; edge failure
    summaries give members missed per seed for a role with many members."""
    from mibench.report import html, markdown
    from mibench.results import RunRecord

    def cert(seed):
        return {"checks": [{"name": "necessity a2.h3", "op": "<=", "threshold": 0.5, "value": 0.1 * seed,
                            "passed": True},
                           {"name": "accuracy", "op": ">=", "threshold": 0.9, "value": 1.0, "passed": True}]}

    truth = {f"a{i}.h0": "role" for i in range(7)}
    records = [RunRecord(technique="dla", case="ioi", seed=s, granularity="node", status="ok",
                         truth_labels=truth, certificate=cert(s)) for s in (0, 1)]
    rows = markdown.certificate_rows(records)
    assert rows[0][1] == ("necessity: 1 of the 7 truth nodes ablated one at a time (the others have "
                          "role checks), worst shown")
    assert rows[0][3] == "0.00, 0.10"
    edges = {f"e{i}": "k" for i in range(10)} | {"q0": "q"}
    runs = [RunRecord(technique="eap", case="ioi", seed=s, granularity="edge", status="ok",
                      truth_labels=edges, metrics={"failures": {"missed": [
                          *[{"component": f"e{i}", "role": "k", "rank": 20} for i in range(8 + s)],
                          {"component": "q0", "role": "q", "rank": 30}]}}) for s in (0, 1)]
    assert html._missed_by_role(runs) == "k: 8.5 of its 10 missed per seed; q: missed on 2 of 2 seeds"


def test_literature_runs_and_imported_results_get_their_own_section_and_move_no_ranking(results, tmp_path):
    """A literature-tier run (here a copy of a planted record relabelled) and an imported MIB graph
    appear only in the literature section: the rankings are byte-identical with and without them."""
    import json

    from mibench.imported import ImportedResult, save
    from mibench.results import load_record

    records, excluded = load_records(results)
    before = render_leaderboard(records, excluded)
    literature = load_record(next(results.rglob("dla/ioi/*/seed0.json")))
    literature.case, literature.case_tier = "gpt2_ioi", "literature"
    figures = {"node": {"k": 26, "auroc": 0.886, "ap": 0.706, "precision_at_k": 0.615, "node_rule": "out",
                        "in_graph": {"size": 79, "precision": 0.291, "recall": 0.885}}}
    save(tmp_path, ImportedResult("eap_ig (MIB)", "hannamw/MIB-circuit-track", "ioi-eap-ig.json", "gpt2_ioi",
                                  "literature", 0, "medium", "out", figures))
    from mibench.imported import load

    imported = load(tmp_path)
    assert json.loads(next(tmp_path.rglob("*.json")).read_text())["source"] == "hannamw/MIB-circuit-track"
    after = render_leaderboard([*records, literature], excluded, imported=imported)
    rankings = lambda md: md.split("## Rankings")[1].split("## Chance levels")[0]  # noqa: E731
    assert rankings(after) == rankings(before)
    section = after.split("## Literature tier (GPT-2 small)")[1]
    assert "### Case `gpt2_ioi` (literature)" in section and "eap_ig (MIB) (imported)" in section
    assert "gpt2_ioi" not in after.split("## Literature tier")[0]
    page = render_report([*records, literature], excluded, imported=imported)
    assert "id='literature'" in page and "eap_ig (MIB) (imported)" in page
