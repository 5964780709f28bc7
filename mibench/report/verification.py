"""The leaderboard's verification section: each verifier's error rates on claims of known status,
as Markdown and as an HTML fragment (a pure function of the verification records)."""
from __future__ import annotations

import html
import math

from tabulate import tabulate

from mibench.verification.claims import CLAIM_TYPES, WRONG_BECAUSE
from mibench.verification.track import ErrorRates, Rate, VerificationRecord, error_rates

HEADING = "Verification track"
INTRO = ("Each verifier judged claims of known status on every certified (case, seed): the true "
         "circuit, the true circuit minus one role, plus one distractor, with one role swapped for a "
         "look-alike, and a random circuit of the same size (`mibench verify-claims`). False "
         "acceptance = accepted wrong claims / wrong claims; false rejection = rejected true "
         "circuits / true circuits; brackets are Wilson 95% intervals. A claim with a distractor "
         "added still reproduces the behaviour, so only a minimality-type test can reject it: the "
         "breakdown by claim type shows which kinds of error each verifier catches.")
TYPE_NOTE = ("Each cell of the breakdown is that type's error rate: for `true`, the share of true "
             "circuits rejected; for every other type (all wrong: "
             + ", ".join(f"`{k}` {v}" for k, v in WRONG_BECAUSE.items())
             + "), the share accepted.")


def _rate(rate: Rate) -> str:
    if not rate.n:
        return "-"
    lo, hi = rate.interval
    return f"{rate.value:.2f} [{lo:.2f}, {hi:.2f}] ({rate.k}/{rate.n})"


def overall_rows(rates: dict[str, ErrorRates]) -> tuple[list[str], list[list[str]]]:
    headers = ["verifier", "false acceptance", "false rejection", "instances", "not judged"]
    rows = [[name, _rate(r.far), _rate(r.frr), str(r.instances), str(r.unjudged)]
            for name, r in sorted(rates.items(), key=lambda kv: _sort_key(kv[1]))]
    return headers, rows


def _sort_key(rates: ErrorRates) -> tuple[float, str]:
    """Fewest errors first: the mean of the two rates (a missing rate counts as 1)."""
    far = rates.far.value if rates.far.n else 1.0
    frr = rates.frr.value if rates.frr.n else 1.0
    return (far + frr) / 2 if not math.isnan(far + frr) else 1.0, rates.verifier


def type_rows(rates: dict[str, ErrorRates]) -> tuple[list[str], list[list[str]]]:
    kinds = [k for k in CLAIM_TYPES if any(k in r.by_type for r in rates.values())]
    headers = ["verifier", *(f"{k} ({'rejected' if k == 'true' else 'accepted'})" for k in kinds)]
    rows = [[name, *(_rate(r.by_type[k]) if k in r.by_type else "-" for k in kinds)]
            for name, r in sorted(rates.items(), key=lambda kv: _sort_key(kv[1]))]
    return headers, rows


CASE_NOTE = ("By case (the traps included): wrong claims accepted / wrong claims, and true circuits "
             "rejected / true circuits, over the seeds.")


def case_rows(records: list[VerificationRecord]) -> tuple[list[str], list[list[str]]]:
    """Verifier × case: the errors on each case's claims, ``accepted wrong a/b · rejected true c/d``."""
    cases = sorted({r.case for r in records}, key=lambda c: (c.startswith("trap_"), c))
    rows = []
    for verifier in sorted({r.verifier for r in records}):
        cells = []
        for case in cases:
            rates = error_rates([r for r in records if r.verifier == verifier and r.case == case]).get(verifier)
            cells.append("-" if rates is None or not (rates.far.n or rates.frr.n) else
                         f"{rates.far.k}/{rates.far.n} · {rates.frr.k}/{rates.frr.n}")
        rows.append([verifier, *cells])
    return ["verifier (wrong accepted · true rejected)", *cases], rows


def render_markdown(records: list[VerificationRecord], level: int = 2) -> str:
    """The section, with a heading of ``level`` (the leaderboard's sections are ``##``)."""
    if not records:
        return ""
    rates = error_rates(records)
    sizes = ", ".join(sorted({r.size for r in records}))
    seeds = ", ".join(map(str, sorted({r.seed for r in records})))
    out = [f"{'#' * level} {HEADING}", "", INTRO, "",
           f"{len({r.case for r in records})} cases, seeds {seeds}, size {sizes}.", ""]
    headers, rows = overall_rows(rates)
    out += [tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), "",
            f"{'#' * (level + 1)} By claim type", "", TYPE_NOTE, ""]
    headers, rows = type_rows(rates)
    out += [tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), "",
            f"{'#' * (level + 1)} By case", "", CASE_NOTE, ""]
    headers, rows = case_rows(records)
    out += [tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), ""]
    return "\n".join(out)


def runtime_rows(records: list[VerificationRecord]) -> list[list[str]]:
    """Per verifier: instances, claims judged and seconds per claim (for RUNTIMES.md: it depends
    on the machine, so the leaderboard's tables leave it out)."""
    rows = []
    for verifier in sorted({r.verifier for r in records}):
        mine = [r for r in records if r.verifier == verifier and r.status == "ok"]
        claims = sum(len(r.verdicts) for r in mine)
        seconds = sum(r.runtime_s for r in mine)
        rows.append([verifier, str(len(mine)), str(claims), f"{seconds / claims:.2f}" if claims else "-"])
    return rows


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(records: list[VerificationRecord]) -> str:
    """The section as an HTML fragment (a ``<section>``), for the report page."""
    if not records:
        return ""
    rates = error_rates(records)
    return (f'<section id="verification"><h2>{html.escape(HEADING)}</h2><p>{html.escape(INTRO)}</p>'
            f"{_html_table(*overall_rows(rates))}<h3>By claim type</h3><p>{html.escape(TYPE_NOTE)}</p>"
            f"{_html_table(*type_rows(rates))}<h3>By case</h3><p>{html.escape(CASE_NOTE)}</p>"
            f"{_html_table(*case_rows(records))}</section>")
