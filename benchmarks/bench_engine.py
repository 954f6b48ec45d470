"""State transitions per second of the local Flows interpreter.

Two loops, no action providers, no sleeping:

* pass/choice: Pass -> Choice -> Pass ... with a realistic state (a scan input document);
  the run is stopped by the engine's max-transitions guard after N transitions.
* counter: ExpressionEval (`.=` increment) -> Choice (NumericLessThan) until N.

Usage: python benchmarks/bench_engine.py [--transitions N] [--repeat R]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from dichroism_control.local.engine import Engine

DOCUMENT: dict[str, Any] = {
    "input": {
        "beamline": "bl402",
        "source": {
            "collection_id": "1b2c3d4e-0000-4000-8000-000000000402",
            "path": "/data/P1/scan.h5",
            "size": 123,
        },
        "destination": {
            "collection_id": "1b2c3d4e-0000-4000-8000-000000004020",
            "path": "/cfs/P1/scan.h5",
        },
    }
}

PASS_CHOICE = {
    "StartAt": "Copy",
    "States": {
        "Copy": {
            "Type": "Pass",
            "Parameters": {"path.$": "$.input.destination.path", "size.$": "$.input.source.size"},
            "ResultPath": "$.last",
            "Next": "Check",
        },
        "Check": {
            "Type": "Choice",
            "Choices": [
                {
                    "And": [
                        {"Variable": "$.last.size", "IsPresent": True},
                        {"Variable": "$.last.size", "NumericLessThan": 0},
                    ],
                    "Next": "Done",
                }
            ],
            "Default": "Copy",
        },
        "Done": {"Type": "Pass", "End": True},
    },
}


def counter_flow(limit: int) -> dict[str, Any]:
    return {
        "StartAt": "Inc",
        "States": {
            "Inc": {
                "Type": "ExpressionEval",
                "Parameters": {"n.=": "counter.n + 1"},
                "ResultPath": "$.counter",
                "Next": "Check",
            },
            "Check": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.counter.n", "NumericLessThan": limit, "Next": "Inc"}],
                "Default": "Done",
            },
            "Done": {"Type": "Pass", "End": True},
        },
    }


def measure(
    label: str, engine: Engine, definition: dict[str, Any], data: Any, repeat: int
) -> float:
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        outcome = engine.run(definition, data)
        elapsed = time.perf_counter() - start
        best = max(best, outcome.transitions / elapsed)
    print(
        f"{label:<12} {outcome.transitions:>7} transitions ({outcome.code}); "
        f"best {best:,.0f} transitions/s"
    )
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.transitions
    measure("pass/choice", Engine({}, max_transitions=n), PASS_CHOICE, DOCUMENT, args.repeat)
    measure(
        "counter",
        Engine({}, max_transitions=n + 10),
        counter_flow(n // 2),
        {**DOCUMENT, "counter": {"n": 0}},
        args.repeat,
    )


if __name__ == "__main__":
    main()
