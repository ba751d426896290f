"""The claims engine compares typed measures, never their names (issue 29, point 5): each claim
names a Measure or a rule that picks the task's measure, and training/claims.py holds no comparison
of a measure with a string."""

from __future__ import annotations

import ast
import inspect

import pytest

from lowrank_lab.training import claims
from lowrank_lab.training.claims import (
    CLAIMS,
    FORGETTING_CLAIM,
    MITIGATION_CLAIMS,
    convergence,
    measure_for,
    task_metric,
)
from lowrank_lab.training.stats import (
    CORRELATION,
    FORGETTING,
    INTRUDER_COUNT,
    LOSS_AUC,
    MEASURES,
    STEPS_TO_90,
    Measure,
)
from lowrank_lab.training.tasks import TASKS, get_task

EVERY_CLAIM = (*CLAIMS, FORGETTING_CLAIM, *MITIGATION_CLAIMS)


def test_named_measures_are_the_registry_entries():
    named = {"loss_auc": LOSS_AUC, "steps_to_90": STEPS_TO_90, "intruders": INTRUDER_COUNT,
             "forgetting": FORGETTING, "correlation": CORRELATION}  # fmt: skip
    assert all(MEASURES[name] is m for name, m in named.items())


@pytest.mark.parametrize("claim", EVERY_CLAIM, ids=lambda c: c.key)
def test_every_claim_reads_a_registered_measure_on_every_task(claim):
    assert isinstance(claim.measure, Measure) or claim.measure in (task_metric, convergence)
    for spec in TASKS.values():
        assert measure_for(claim, spec) in MEASURES.values()


@pytest.mark.parametrize(
    ("key", "task", "expected"),
    [
        ("pissa>lora", "sst2", "accuracy"),
        ("pissa>lora", "cola", "matthews"),
        ("pissa>lora", "stsb", "spearman"),
        ("pissa>lora", "gsm8k", "answer_loss"),
        ("pissa-converges", "sst2", "loss_auc"),  # a cross-entropy: nats
        ("pissa-converges", "gsm8k", "loss_auc"),
        ("pissa-converges", "stsb", "steps_to_90"),  # a squared error has no common scale
        ("intruders r8", "sst2", "intruders"),
        ("lora-forgets-less", "sst2", "forgetting"),
        ("intruders~forgetting", "sst2", "correlation"),
        ("mitigation-forgets-less", "sst2", "forgetting"),
        ("mitigation-keeps-task", "sst2", "accuracy"),
    ],
)
def test_each_claim_reads_the_measure_it_always_read(key, task, expected):
    claim = next(c for c in EVERY_CLAIM if c.key == key)
    assert measure_for(claim, get_task(task)) is MEASURES[expected]


def _measure_like(node: ast.AST) -> bool:
    """``x.measure``, ``measure``, or ``measure.name``/``x.measure.name``."""
    if isinstance(node, ast.Attribute) and node.attr == "name":
        node = node.value
    return (isinstance(node, ast.Attribute) and node.attr == "measure") or (
        isinstance(node, ast.Name) and node.id == "measure"
    )


def test_claims_compares_no_measure_with_a_string():
    tree = ast.parse(inspect.getsource(claims))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            strings = [s for s in sides if isinstance(s, ast.Constant) and isinstance(s.value, str)]
            if strings and any(_measure_like(s) for s in sides):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.keyword) and node.arg == "measure" and isinstance(node.value, ast.Constant):
            found.append(f"line {node.lineno}: measure={node.value.value!r}")
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "MEASURES":
            if isinstance(node.slice, ast.Constant):  # a measure looked up by a literal name
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert found == []
