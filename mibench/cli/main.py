"""Entry point: ``mibench <subcommand>``. User errors print one line and exit 2, never a traceback."""
from __future__ import annotations

import argparse
import os
import sys

from mibench import __version__
from mibench.api import MibenchError
from mibench.cli import (check_technique, export_graph, export_prompts, leaderboard, list as list_cmd, report, run,
                         score_graph, verify, verify_claims)

SUBCOMMANDS = {"run": run, "list": list_cmd, "leaderboard": leaderboard, "verify": verify,
               "verify-claims": verify_claims, "check-technique": check_technique, "report": report,
               "export-prompts": export_prompts, "score-graph": score_graph, "export-graph": export_graph}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"mibench: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mibench", description="Score interpretability techniques against "
                     "circuits whose ground truth is known.")
    parser.add_argument("--version", action="version", version=f"mibench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, module in SUBCOMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
    return parser


def _silence_stdout() -> None:
    """Point stdout at /dev/null: Python flushes it again at exit, which would raise once more."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _interrupt_on_sigterm() -> None:
    """Handle SIGTERM (a scheduler or `kill` stopping a run) as Ctrl-C: the same cleanup, results
    already written kept, exit 130 (by default Python would die without its cleanup)."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # the command line, not a test calling main(): own the process's signals
        _interrupt_on_sigterm()
    try:
        code = SUBCOMMANDS[args.command].main(args)
        sys.stdout.flush()  # so that a closed pipe shows up here rather than at interpreter exit
        return code
    except BrokenPipeError:  # the reader stopped early (`mibench list techniques | head -3`)
        _silence_stdout()
        return 141  # what a shell reports for a command killed by SIGPIPE (128 + 13)
    except MibenchError as exc:
        print(f"mibench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mibench: interrupted; results already written are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
