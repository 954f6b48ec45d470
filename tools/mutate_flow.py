"""Mutation check of flow_definitions/prune.json (mutmut mutates Python only): run by hand.

    python tools/mutate_flow.py            # every mutation, 2 at a time (~2 min)
    python tools/mutate_flow.py -k Judge   # the mutations whose name contains "Judge"

Each mutation below is one small, hand-written change to the prune flow's definition (a
Choice's Next flipped, a comparison reversed, the delete list built from the wrong list, a
safety option dropped...). For each, a copy of the project is made in a temp directory with
the mutated prune.json in its flow_definitions/, and the tests that run the prune flow on
the local backend are run there: `tests/e2e/test_flows.py -k prune` (the real verifiers,
fake Globus services, real files) and `tests/local/test_flow_definitions.py` (the engine
with stubbed actions). The copy is imported instead of the installed tree (its root comes
first on sys.path; checked before any mutation runs), so config's default
`definitions_path` (beside the package) is the mutated file. A mutation is killed when
those tests fail. The unmutated copy must pass first, or nothing is reported.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COPIED = ["dichroism_control", "compute_functions", "flow_definitions", "tests", "examples"]
COPIED_FILES = ["pyproject.toml", "config.yml"]
TESTS = ["tests/e2e/test_flows.py", "tests/local/test_flow_definitions.py"]
# The e2e module also runs new_file and archive flows; only the prune ones matter here.
SELECT = "prune or test_flow_definitions"
PYTEST = [sys.executable, "-m", "pytest", "-x", "-q", "-o", "addopts=", "-p", "no:cacheprovider"]

Doc = dict[str, Any]


def _param(state: str, key: str, old: Any, new: Any) -> Callable[[Doc], None]:
    """Replace Parameters[key] of a state, which must be `old` (so a mutation that no
    longer matches the definition fails loudly instead of testing nothing)."""

    def apply(doc: Doc) -> None:
        params = doc["definition"]["States"][state]["Parameters"]
        assert params.get(key) == old, f"{state}.{key} is {params.get(key)!r}, not {old!r}"
        if new is None:
            del params[key]
        else:
            params[key] = new

    return apply


def _field(state: str, path: list[Any], old: Any, new: Any) -> Callable[[Doc], None]:
    """Replace one field of a state reached by `path` (keys and list indices)."""

    def apply(doc: Doc) -> None:
        node: Any = doc["definition"]["States"][state]
        for step in path[:-1]:
            node = node[step]
        assert node[path[-1]] == old, f"{state}{path} is {node[path[-1]]!r}, not {old!r}"
        node[path[-1]] = new

    return apply


def _replace_in(state: str, key: str, old: str, new: str) -> Callable[[Doc], None]:
    """Replace one substring (that must occur exactly once) of an expression parameter."""

    def apply(doc: Doc) -> None:
        params = doc["definition"]["States"][state]["Parameters"]
        text = params[key]
        assert text.count(old) == 1, f"{state}.{key}: {old!r} occurs {text.count(old)} times"
        params[key] = text.replace(old, new)

    return apply


def _swap_states(a: str, b: str) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        states = doc["definition"]["States"]
        states[a], states[b] = states[b], states[a]

    return apply


def _rename_param_choice(state: str, old_key: str, new_key: str) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        choice = doc["definition"]["States"][state]["Choices"][0]
        assert old_key in choice, f"{state} has no {old_key}"
        choice[new_key] = choice.pop(old_key)

    return apply


SAME = "JudgeTarget"
SAME_KEY = "same.="


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str  # the bug it plants, in words
    apply: Callable[[Doc], None]


MUTATIONS = [
    Mutation(
        "WhichSafeCopy-dtn-to-tape",
        "a compute-dtn prune is verified by the tape verifier's state",
        _field("WhichSafeCopy", ["Choices", 0, "Next"], "VerifyCFSCopies", "VerifyTapeCopies"),
    ),
    Mutation(
        "WhichSafeCopy-default-checks",
        "an unknown location skips verification and goes to the checks",
        _field("WhichSafeCopy", ["Default"], "UnknownLocation", "StartChecks"),
    ),
    Mutation(
        "VerifyCFS-safe-root-is-target",
        "cfs_verify is given the target root as its safe root (a copy checked against itself)",
        lambda doc: doc["definition"]["States"]["VerifyCFSCopies"]["Parameters"]["tasks"][0][
            "kwargs"
        ].__setitem__("safe_root.$", "$.input.target.root"),
    ),
    Mutation(
        "VerifyCFS-no-exception-on-failure",
        "a failed verifier task is taken as a result (ExceptionOnActionFailure false)",
        _field("VerifyCFSCopies", ["ExceptionOnActionFailure"], True, False),
    ),
    Mutation(
        "StartChecks-todo-is-every-file",
        "the stat loop walks every file, not only the verified ones",
        _param(
            "StartChecks",
            "todo.=",
            "verification.details.result[0].safe",
            "list(range(len(input.target.files)))",
        ),
    ),
    Mutation(
        "MoreToCheck-less-or-equal",
        "the stat loop runs one past its end (pos <= n)",
        _rename_param_choice("MoreToCheck", "NumericLessThanPath", "NumericLessThanEqualsPath"),
    ),
    Mutation(
        "JudgeTarget-size-not-equal",
        "a target whose size differs from the recorded one counts as unchanged",
        _replace_in(
            SAME,
            SAME_KEY,
            "stat.details.size == input",
            "stat.details.size != input",
        ),
    ),
    Mutation(
        "JudgeTarget-no-mtime",
        "the mtime is not compared: a rewritten target of the same size counts as unchanged",
        _replace_in(
            SAME,
            SAME_KEY,
            " and stat.details.last_modified == input.target.files[check.todo[check.pos]].mtime",
            "",
        ),
    ),
    Mutation(
        "JudgeTarget-no-type",
        "the type is not compared: a directory of the same size counts as unchanged",
        _replace_in(SAME, SAME_KEY, " and stat.details.type == 'file'", ""),
    ),
    Mutation(
        "JudgeTarget-any-status",
        "a failed stat is not ruled out by its status",
        _replace_in(SAME, SAME_KEY, "stat.status == 'SUCCEEDED' and ", ""),
    ),
    Mutation(
        "TargetUnchanged-default-delete",
        "a changed target is marked for deletion",
        _field("TargetUnchanged", ["Default"], "WasStatted", "MarkForDelete"),
    ),
    Mutation(
        "MarkForDelete-MarkChanged-swapped",
        "an unchanged target is reported changed and a changed one deleted",
        _swap_states("MarkForDelete", "MarkChanged"),
    ),
    Mutation(
        "WasStatted-gone-changed-swapped",
        "a target that is gone is reported changed (and a changed one gone)",
        _field("WasStatted", ["Choices", 0, "Next"], "MarkChanged", "MarkGone"),
    ),
    Mutation(
        "MarkForDelete-appends-pos",
        "the delete list gets the loop position, not the file index it stands for",
        _param(
            "MarkForDelete",
            "delete.=",
            "check.delete + [check.todo[check.pos]]",
            "check.delete + [check.pos]",
        ),
    ),
    Mutation(
        "AnythingToDelete-greater-than-minus-1",
        "an empty delete list still runs the delete (NumericGreaterThan 0 -> -1)",
        _field("AnythingToDelete", ["Choices", 0, "NumericGreaterThan"], 0, -1),
    ),
    Mutation(
        "Delete-iterates-todo",
        "the delete task deletes every verified file, changed or not (check.todo)",
        _replace_in("DeleteUnchanged", "DATA.=", "for i in check.delete]", "for i in check.todo]"),
    ),
    Mutation(
        "Delete-recursive",
        "the delete task may delete directories recursively",
        _param("DeleteUnchanged", "recursive", False, True),
    ),
    Mutation(
        "Delete-no-ignore-missing",
        "a file already gone fails the delete (a retry after a partial delete fails)",
        _param("DeleteUnchanged", "ignore_missing", True, None),
    ),
    Mutation(
        "Delete-no-deadline",
        "the delete may start any time later (no deadline)",
        _param("DeleteUnchanged", "deadline.$", "$.input.deadline", None),
    ),
    Mutation(
        "StatTarget-catch-goes-on",
        "a stat that raises is taken as a stat and the loop goes on",
        _field("StatTarget", ["Catch", 0, "Next"], "StatUnavailable", "JudgeTarget"),
    ),
]


def make_copy(where: Path) -> Path:
    root = where / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        shutil.copytree(REPO / name, root / name, ignore=ignore, symlinks=True)
    for name in COPIED_FILES:
        shutil.copy2(REPO / name, root / name)
    return root


def run_tests(root: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [*PYTEST, "-k", SELECT, *TESTS],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    return proc.returncode, (lines[-1] if lines else "")


def check_imports(root: Path) -> None:
    """The copy, not the installed tree, is what the tests import."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "import dichroism_control.config as c; print(c.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    if not out.startswith(str(root)):
        raise SystemExit(f"the tests would import {out}, not the copy in {root}")


def write_prune(root: Path, mutation: Mutation | None) -> None:
    original = json.loads((REPO / "flow_definitions" / "prune.json").read_text())
    doc = copy.deepcopy(original)
    if mutation is not None:
        mutation.apply(doc)
        if doc == original:
            raise SystemExit(f"{mutation.name} changes nothing")
    (root / "flow_definitions" / "prune.json").write_text(json.dumps(doc, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-k", dest="only", help="only mutations whose name contains this")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="parallel runs (2)")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or args.only in m.name]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mutate-flow-") as tmp:
        roots = [make_copy(Path(tmp) / f"w{i}") for i in range(max(1, args.jobs))]
        check_imports(roots[0])
        write_prune(roots[0], None)
        code, last = run_tests(roots[0])
        if code != 0:
            print(f"the unmutated definition fails its tests ({last}): nothing to report")
            return 2
        print(f"unmutated: {last}")
        free = list(roots)

        def one(mutation: Mutation) -> tuple[Mutation, int, str]:
            root = free.pop()
            try:
                write_prune(root, mutation)
                code, last = run_tests(root)
                return mutation, code, last
            finally:
                free.append(root)

        with ThreadPoolExecutor(max_workers=len(roots)) as pool:
            outcomes = list(pool.map(one, chosen))
    killed = 0
    for mutation, code, last in outcomes:
        # pytest: 1 = tests failed (or errored); anything else is no verdict on the mutation
        verdict = "killed" if code == 1 else "SURVIVED" if code == 0 else f"error ({code})"
        killed += code == 1
        print(f"{verdict:9} {mutation.name:40} {mutation.what}")
        if code != 1:
            print(f"          {last}")
    total = len(outcomes)
    print(
        f"\nflow mutations {total}: killed {killed}, not killed {total - killed}"
        f" ({100.0 * killed / max(total, 1):.1f} % killed) in"
        f" {(time.monotonic() - started) / 60:.1f} min"
    )
    return 0 if killed == total else 1


if __name__ == "__main__":
    sys.exit(main())
