"""The planner's finalists (`modify.study.finalists`): which plans contend, that a contender below
the target is never fine-tuned nor picked, that the least KL after the brief fine-tune wins even
against the least summed KL (the whole step inside `plan` is tested on tests/test_planner.py's toy)."""

from __future__ import annotations

import itertools

import pytest

from modify.study.finalists import contenders, run_finalists
from modify.study.knapsack import Option, solve
from modify.study.latency import Setting, Timing
from modify.study.plan_records import ChoiceRow, PlanConfig
from modify.study.sensitivity import Score

# Two blocks of a hand-made table: (action, fraction, saving ms, KL alone).
TABLE = {
    "a": [("keep", None, 0.0, 0.0), ("delete", None, 2.0, 0.30), ("narrow", 0.25, 1.5, 0.05), ("mod", 0.25, 1.2, 0.22)],
    "b": [("keep", None, 0.0, 0.0), ("delete", None, 1.0, 0.10), ("narrow", 0.25, 0.6, 0.02), ("mod", 0.25, 0.5, 0.3)],
}


def _grouped() -> list[list[ChoiceRow]]:
    return [
        [
            ChoiceRow(block, 64, action, f, f"{action} 1/4" if f else action, saving, 0.01, kl, 0.9)
            for action, f, saving, kl in rows
        ]
        for block, rows in TABLE.items()
    ]


def _options(grouped: list[list[ChoiceRow]]) -> list[list[Option]]:
    return [[Option(r.label, float(r.saving_ms or 0), float(r.kl or 0)) for r in group] for group in grouped]


def _actions(grouped: list[list[ChoiceRow]]) -> list[list[str]]:
    return [[r.action for r in group] for group in grouped]


def _brute(options, actions, required, allowed) -> tuple[int, ...] | None:
    """The cheapest plan by enumeration among the options ``allowed(block, index)`` lets through."""
    plans = [
        c
        for c in itertools.product(*(range(len(o)) for o in options))
        if all(allowed(b, j) for b, j in enumerate(c))
        and sum(options[b][j].saving for b, j in enumerate(c)) >= required
    ]
    return min(plans, key=lambda c: sum(options[b][j].cost for b, j in enumerate(c)), default=None)


def test_contenders_are_the_best_then_each_single_action_then_the_best_without_one_of_its_choices() -> None:
    grouped = _grouped()
    options, actions = _options(grouped), _actions(grouped)
    best = solve(options, 2.0).choice
    found = contenders(options, actions, best, 2.0, limit=10, names=["a", "b"])
    assert found[0] == ("the solver's plan", best) == ("the solver's plan", (2, 2))  # narrow both: 2.1 ms, KL 0.07
    expected = {
        "deletion only": _brute(options, actions, 2.0, lambda b, j: actions[b][j] in ("keep", "delete")),
        "narrowing only": _brute(options, actions, 2.0, lambda b, j: actions[b][j] in ("keep", "narrow")),
        "MoD only": _brute(options, actions, 2.0, lambda b, j: actions[b][j] in ("keep", "mod")),
        "without a's narrow 1/4": _brute(options, actions, 2.0, lambda b, j: (b, j) != (0, 2)),
        "without b's narrow 1/4": _brute(options, actions, 2.0, lambda b, j: (b, j) != (1, 2)),
    }
    # every contender is the exact optimum of its restriction, and no plan appears twice
    plans = [picks for _, picks in found]
    assert len(plans) == len(set(plans))
    for source, picks in found[1:]:
        assert picks == expected[source], source
    # a restriction whose optimum repeats an earlier plan adds nothing ("narrowing only" is the best)
    assert "narrowing only" not in dict(found)
    assert [s for s, _ in found][:2] == ["the solver's plan", "deletion only"]
    assert contenders(options, actions, best, 2.0, limit=2) == found[:2]


def test_a_restriction_that_cannot_reach_the_saving_is_no_contender() -> None:
    grouped = _grouped()
    options, actions = _options(grouped), _actions(grouped)
    found = dict(contenders(options, actions, (1, 1), 2.9, limit=10))  # only deleting both reaches 2.9
    assert found == {"the solver's plan": (1, 1)}


def _timing(speedup: float) -> Timing:
    return Timing(1.0, 0.01, 10 / speedup, 10.0, (speedup,) * 3)


def _run(tuned: dict[tuple[str, ...], float], margin: float = 0.1, required: float = 2.9, deleting_a: float = 1.25):
    """run_finalists on the hand-made table with fake timings and brief fine-tunes: deleting both
    blocks measures 1.1x, deleting block a ``deleting_a``, anything else 1.3x; KL after tuning from
    ``tuned`` (0.05 where not given). Returns (finalists, timings, the plans evaluated)."""
    grouped = _grouped()
    config = PlanConfig(speedup=1.2, setting=Setting(input_size=16), finalists=4, tune_margin=margin)
    speeds = {("delete", "delete"): 1.1, ("delete", "keep"): deleting_a}
    evaluated: list[tuple[str, ...]] = []

    def actions_of(recipe) -> tuple[str, ...]:
        by_name = {r["name"]: r["action"] for r in recipe["rules"]}
        return tuple(by_name.get(b, "keep") for b in TABLE)

    def evaluate(recipe) -> tuple[Score, Score]:
        evaluated.append(actions_of(recipe))
        return Score(0.1, 0.9), Score(tuned.get(actions_of(recipe), 0.05), 0.95)

    finalists, timings = run_finalists(
        grouped,
        _options(grouped),
        (2, 2),
        _timing(1.3),
        required,
        {"a": 64, "b": 64},
        10.0,
        config,
        measure=lambda recipe: _timing(speeds.get(actions_of(recipe), 1.3)),
        evaluate=evaluate,
        emit=lambda kind, info: None,
    )
    return finalists, timings, evaluated


def test_the_least_kl_after_the_brief_finetune_wins_and_a_contender_below_the_target_is_never_tuned() -> None:
    """The best plan needed 2.9 ms of summed saving to measure 1.2x (its narrowed blocks' savings
    overlap); the deletion-only plan is searched for at the target by measurement, where deleting
    block a alone (2.0 ms) measures 1.25x, not solved at the best plan's 2.9 ms (deleting both)."""
    finalists, timings, evaluated = _run({("narrow", "narrow"): 0.02, ("delete", "keep"): 0.01})
    picked = [f for f in finalists if f.picked]
    assert len(picked) == 1 and picked[0].source == "deletion only"
    assert picked[0].chosen == ("a:delete", "b:keep") and picked[0].tuned_kl == 0.01
    assert picked[0].summed_kl > finalists[0].summed_kl  # the solver's own choice lost after fine-tuning
    assert set(timings) == {f.chosen for f in finalists if f.kl is not None}
    assert [f.source for f in finalists] == [
        "the solver's plan",
        "deletion only",
        "MoD only",
        "without a's narrow 1/4",  # solved at 2.9 ms: deleting both, which measures 1.1x
    ]
    short = [f for f in finalists if f.measured_speedup < 1.2]
    assert [f.chosen for f in short] == [("a:delete", "b:delete")]
    assert all(f.kl is None and f.tuned_kl is None and not f.picked for f in short)
    assert len(evaluated) == len(finalists) - len(short)


@pytest.mark.parametrize(
    ("rival", "margin", "deleting_a", "winner"),
    [
        # the rival (deleting block a) slower than the solver's plan (1.25x against 1.3x)
        (0.0189, 0.1, 1.25, "the solver's plan"),  # 5.5% lower: within the brief fine-tune's own noise
        (0.0179, 0.1, 1.25, "deletion only"),  # 10.5% lower
        (0.0189, 0.0, 1.25, "deletion only"),  # no margin: the least KL wins outright
        (0.0210, 0.0, 1.25, "the solver's plan"),
        # ... and faster (1.4x): of the plans the score cannot tell apart, the fastest
        (0.0210, 0.1, 1.4, "deletion only"),  # 5% higher: the same, and faster
        (0.0225, 0.1, 1.4, "the solver's plan"),  # 12.5% higher: worse, however fast
        (0.0210, 0.0, 1.4, "the solver's plan"),
    ],
)
def test_the_fastest_finalist_within_the_margin_of_the_least_kl_is_picked(
    rival: float, margin: float, deleting_a: float, winner: str
) -> None:
    tuned = {("narrow", "narrow"): 0.02, ("delete", "keep"): rival}
    finalists, _, _ = _run(tuned, margin=margin, deleting_a=deleting_a)
    assert [f.source for f in finalists if f.picked] == [winner]
