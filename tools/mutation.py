"""Mutation testing of the deletion path (issue 13): run by hand, never in CI.

    pip install -e '.[test,mutation]'
    python tools/mutation.py              # the whole deletion path, 2 workers (~15 min)
    python tools/mutation.py --only 'compute_functions.cfs.*'   # a subset, e.g. after a fix
    python tools/mutation.py --report     # re-print the last run's figures and survivors

mutmut 3 (configured in pyproject.toml, [tool.mutmut]) copies the project into mutants/,
rewrites each function of the files in `only_mutate` into a trampoline plus its mutants, runs
the selected tests once to learn which tests reach which function, then runs, per mutant,
only those tests. This script picks WHICH functions count as the deletion path (SCOPE below:
mutmut's own scope is whole files, and e.g. hpss.py's archive half is not about deletion),
runs mutmut on exactly those, and prints the kill ratio and every survivor's diff.

Counted as killed: a test failed, or the mutant timed out (it made the code hang, which a
real run would notice). Everything else is counted as surviving, "no tests" included.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import fnmatch
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The functions mutated, as mutmut names them: `module.x_function` for a function,
# `module.xǁClassǁmethod` for a method. Whole modules where the whole module decides what a
# prune deletes; for hpss.py and the shared helpers only the verification half.
SCOPE = [
    # cfs_verify and the path-safety block it is registered with
    "compute_functions.cfs.*",
    # hpss_verify, its tape listings and parsers, and the same path-safety block
    "compute_functions.hpss.x_hpss_verify__mutmut_*",
    "compute_functions.hpss.x__single_path__mutmut_*",
    "compute_functions.hpss.x__archive_paths__mutmut_*",
    "compute_functions.hpss.xǁ_Sessionsǁhsi_list__mutmut_*",
    "compute_functions.hpss.xǁ_Sessionsǁhtar_list__mutmut_*",
    "compute_functions.hpss.x__parse_hsi_ls__mutmut_*",
    "compute_functions.hpss.x__parse_htar_tvf__mutmut_*",
    "compute_functions.hpss.x__missing__mutmut_*",
    *(
        f"compute_functions.hpss.x_{name}__mutmut_*"
        for name in (
            "_clean_rel",
            "_abs_root",
            "_inside",
            "_is_int",
            "_roots_apart",
            "_items",
            "_summary",
            "_identity",
            "_open_below",
            "_kind",
            "_md5",
            "_local_copy",
            "_each",
        )
    ),
    "compute_functions.hpss.xǁ_Refusedǁ__init____mutmut_*",
    # prune batching and timing, the prune body, what a finished prune run did
    "dichroism_control.lifecycle.prune.*",
    "dichroism_control.lifecycle.batches.*",
    "dichroism_control.lifecycle.prune_runs.*",
    # the roots: where a prune deletes and where it looks for the safe copy
    *(
        f"dichroism_control.routing.x_{name}__mutmut_*"
        for name in (
            "route",
            "_real_root",
            "_join",
            "beamline_for",
            "source_root_path",
            "cfs_root_path",
            "hpss_directory",
        )
    ),
    # the schema binding that pins each prune's roots and verifier (not new_file/archive's)
    *(
        f"dichroism_control.binding.x_{name}__mutmut_*"
        for name in ("prune_bindings", "_const", "_obj", "specialise", "input_validator")
    ),
    # versions (when a file is a new version, superseding) and content identity
    "dichroism_control.versions.*",
    "dichroism_control.identity.*",
]

# mutmut's exit-code classes (mutmut.stats.status_by_exit_code), folded into three.
KILLED = {1: "killed", 3: "killed"}
TIMEOUT = {36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout"}


def status(code: int | None) -> str:
    if code in KILLED:
        return "killed"
    if code in TIMEOUT:
        return "timeout"
    if code == 0:
        return "survived"
    if code in (5, 33):
        return "no tests"
    if code is None:
        return "not checked"
    return f"other ({code})"


def in_scope(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def results(patterns: list[str]) -> dict[str, str]:
    """Mutant name -> status, for the mutants in scope, from mutmut's meta files."""
    found: dict[str, str] = {}
    for meta in sorted((REPO / "mutants").glob("**/*.py.meta")):
        data = json.loads(meta.read_text())
        for name, code in data["exit_code_by_key"].items():
            if in_scope(name, patterns):
                found[name] = status(code)
    return found


def module_of(name: str) -> str:
    return name.split(".x", 1)[0]


def report(patterns: list[str], *, diffs: bool, seconds: float | None) -> int:
    found = results(patterns)
    if not found:
        print("no mutants in scope: run without --report first", file=sys.stderr)
        return 2
    # A surviving mutant that is equivalent by one of the two case rules (see `equivalent`)
    # cannot be killed by any test: it leaves the denominator, listed with its rule.
    rules = {
        name: rule
        for name, state in found.items()
        if state == "survived" and (rule := equivalent(name)) is not None
    }
    for name in rules:
        found[name] = "equivalent"
    by_module: dict[str, Counter[str]] = {}
    for name, state in found.items():
        by_module.setdefault(module_of(name), Counter())[state] += 1
    head = ("total", "killed", "timeout", "equiv", "left")
    print(f"\n{'module':40}" + "".join(f"{h:>8}" for h in head))
    for module, counts in sorted(by_module.items()):
        total = sum(counts.values())
        left = total - counts["killed"] - counts["timeout"] - counts["equivalent"]
        row = (total, counts["killed"], counts["timeout"], counts["equivalent"], left)
        print(f"{module:40}" + "".join(f"{n:8}" for n in row))
    totals = Counter(found.values())
    total = len(found)
    killed = totals["killed"] + totals["timeout"]
    counted = total - totals["equivalent"]
    print(
        f"\nmutants {total}: killed {totals['killed']}, timeouts {totals['timeout']},"
        f" equivalent by rule {totals['equivalent']}, survived {totals['survived']},"
        f" no tests {totals['no tests']}, not checked {totals['not checked']}"
        f"\nkill ratio {killed}/{counted} = {100.0 * killed / max(counted, 1):.1f} %"
        f" (of the mutants that are not equivalent by rule;"
        f" {100.0 * killed / total:.1f} % of all)"
        + (f"\nwall time {seconds / 60:.1f} min" if seconds is not None else "")
    )
    left = sorted(n for n, s in found.items() if s not in ("killed", "timeout", "equivalent"))
    if left:
        print(f"\nnot killed ({len(left)}):")
    for name in left:
        print(f"  {found[name]:12} {name}")
        if diffs:
            for line in mutant_diff(name):
                print(f"      {line[:150]}")
    if rules:
        print(f"\nequivalent by rule ({len(rules)}):")
        for rule, count in sorted(Counter(rules.values()).items()):
            print(f"  {count:4} {rule}")
        if diffs:
            for name in sorted(rules):
                print(f"  {name}: {' / '.join(mutant_diff(name))[:140]}")
    return 0


_PARSED: dict[Path, tuple[list[str], dict[str, ast.FunctionDef | ast.AsyncFunctionDef]]] = {}

# Names bound to sqlite3.Row in the ledger code: a Row's keys are matched case-insensitively
# (Python docs, sqlite3.Row), so `member["ID"]` is `member["id"]`.
ROW_NAMES = {
    "dichroism_control.lifecycle.prune": {"m", "member", "r", "row"},
    "dichroism_control.lifecycle.prune_runs": {"member", "row"},
    "dichroism_control.lifecycle.batches": {"batch", "member"},
    "dichroism_control.versions": {"latest", "old", "row"},
}
SQL_CALLS = {"execute", "executemany", "query"}


def _parsed(path: Path) -> tuple[list[str], dict[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Lines and every function/method of a mutated file (mutants/...), parsed once."""
    if path not in _PARSED:
        text = path.read_text()
        found: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found[node.name] = node
        _PARSED[path] = (text.splitlines(), found)
    return _PARSED[path]


def _pair(name: str) -> tuple[str, list[str], ast.AST | None, ast.AST | None]:
    module, _, function = name.rpartition(".")
    lines, functions = _parsed(REPO / "mutants" / (module.replace(".", "/") + ".py"))
    original = functions.get(function.rsplit("__mutmut_", 1)[0] + "__mutmut_orig")
    return module, lines, original, functions.get(function)


def _source(lines: list[str], node: ast.AST | None) -> list[str]:
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return []
    return [ln.strip() for ln in lines[node.lineno : node.end_lineno or node.lineno]]


def mutant_diff(name: str) -> list[str]:
    """The lines a mutant changes, as -/+ pairs (what `mutmut show` prints, but from one
    parse of each mutated file instead of one process per survivor)."""
    _, lines, original, mutated = _pair(name)
    return [
        line
        for line in difflib.unified_diff(
            _source(lines, original), _source(lines, mutated), lineterm="", n=0
        )
        if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))
    ]


def equivalent(name: str) -> str | None:
    """Why a mutant is equivalent by construction, or None. Two rules, both about letter
    case only, and both checked on the syntax tree (not on text):

    - SQL text (the first argument of execute/executemany/query) whose case changed but
      whose quoted '...' values did not: SQLite keywords and identifiers ignore case;
    - a string key subscripting a sqlite3.Row (ROW_NAMES) whose case changed.
    """
    module, _, original, mutated = _pair(name)
    if original is None or mutated is None:
        return None
    before, after = list(ast.walk(original)), list(ast.walk(mutated))
    if len(before) != len(after):
        return None
    changed = [
        (a, b)
        for a, b in zip(before, after, strict=True)
        if isinstance(a, ast.Constant) and isinstance(b, ast.Constant) and a.value != b.value
    ]
    if len(changed) != 1:
        return None
    a, b = changed[0]
    if not (isinstance(a.value, str) and isinstance(b.value, str)):
        return None
    if a.value.lower() != b.value.lower():
        return None
    parents = {child: node for node in before for child in ast.iter_child_nodes(node)}
    parent = parents.get(a)
    if (
        isinstance(parent, ast.Subscript)
        and parent.slice is a
        and isinstance(parent.value, ast.Name)
        and parent.value.id in ROW_NAMES.get(module, set())
    ):
        return "sqlite3.Row key case (Row keys ignore case)"
    node: ast.AST | None = a
    while node is not None and not isinstance(node, ast.Call):
        node = parents.get(node)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in SQL_CALLS
        and node.args
        and any(n is a for n in ast.walk(node.args[0]))
        and re.findall(r"'[^']*'", a.value) == re.findall(r"'[^']*'", b.value)
    ):
        return "SQL keyword/identifier case (SQLite ignores it; quoted values unchanged)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", action="append", help="restrict to these mutant-name globs")
    parser.add_argument("--max-children", type=int, default=2, help="parallel workers (2)")
    parser.add_argument("--keep", action="store_true", help="reuse mutants/ (no fresh copy)")
    parser.add_argument("--report", action="store_true", help="only print the last results")
    parser.add_argument("--no-diffs", action="store_true", help="survivors by name only")
    args = parser.parse_args(argv)
    patterns = args.only or SCOPE
    if args.report:
        return report(patterns, diffs=not args.no_diffs, seconds=None)
    if shutil.which("mutmut") is None and not _importable("mutmut"):
        print("mutmut is not installed: pip install -e '.[test,mutation]'", file=sys.stderr)
        return 2
    if not args.keep:
        # A fresh copy: mutmut reuses earlier verdicts for unchanged functions otherwise.
        shutil.rmtree(REPO / "mutants", ignore_errors=True)
    started = time.monotonic()
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)]
    run = subprocess.run(
        [*command, *patterns],
        cwd=REPO,
        check=False,
    )
    seconds = time.monotonic() - started
    if run.returncode != 0:
        print(f"mutmut run exited {run.returncode}", file=sys.stderr)
        return run.returncode
    return report(patterns, diffs=not args.no_diffs, seconds=seconds)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    sys.exit(main())
