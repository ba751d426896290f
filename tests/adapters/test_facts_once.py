"""Facts stated once (issues 18 and 29): option defaults come from the init signatures, and the core-only
family of the training harness, the methods diagnose compares and the methods quantisation measures
from the adapter registry."""

from __future__ import annotations

import inspect

import pytest

from lowrank_lab.adapters import ADAPTERS, initialize
from lowrank_lab.adapters.methods import AdapterOptionError, init_options
from lowrank_lab.training.config import CORE_ONLY_METHODS, method_family


@pytest.mark.parametrize("name", [n for n, a in ADAPTERS.items() if a.init is not None])
def test_registry_options_are_the_init_signature_defaults(name):
    am = ADAPTERS[name]
    params = inspect.signature(am.init).parameters
    assert am.options == init_options(am.init)
    for option, default in am.options.items():
        assert params[option].kind is inspect.Parameter.KEYWORD_ONLY and params[option].default == default
    assert not {"scaling", "generator", "grad", "stats"} & set(am.options)  # passed by initialize itself


def test_known_defaults_survive_the_derivation():
    # Published defaults, spelled out here on purpose: PEFT's pissa_niter_4, LoRA-XS's N(0, 1e-5²) core.
    expected = {"n_iter": 4, "oversample": 0, "normalizer": "qr", "reference": False}
    assert ADAPTERS["pissa-fast"].options == expected
    assert ADAPTERS["lora-xs"].options["core_std"] == 1e-5
    assert ADAPTERS["lora"].options == {} and ADAPTERS["full"].options == {}


def test_an_unknown_option_lists_the_signature_defaults():
    import torch

    with pytest.raises(AdapterOptionError, match=r"n_iter=4, oversample=0, normalizer='qr', reference=False"):
        initialize("pissa-fast", torch.randn(8, 6), 2, n_iters=3)


def test_core_only_family_is_derived_from_the_registry():
    expected = {n for n, a in ADAPTERS.items() if a.trains and set(a.trains) <= {"M"}}
    assert CORE_ONLY_METHODS == expected
    assert {"inttune", "lora-xs", "lora-sb", "loldu"} <= CORE_ONLY_METHODS  # the methods of REFERENCE.md
    assert all(method_family(n) == "core" for n in CORE_ONLY_METHODS)
    assert method_family("full") == "full" and method_family("nlora") == "lora"
    assert method_family("head") == "lora"


# Both lists as they are today (7 December 2026), spelled out here on purpose: a changed registry entry
# or rule shows up as a changed list, to be accepted here by hand.
ANGLE_TODAY = (
    "pissa", "pissa-fast", "milora", "olora", "lora-xs", "lora-sb", "nlora", "nlora-pinv", "nlora-sketch",
    "nlora-pinv-additive", "nlora-sketch-additive", "inttune", "loldu", "mica", "eva", "corda-ipm",
    "corda-kpm", "lora-ga", "lora-one", "loftq", "astra", "lora-null",
)  # fmt: skip
QUANT_TODAY = ("pissa", "milora", "olora", "nlora-pinv", "loldu", "loftq")


def test_angle_methods_are_the_registry_entries_with_a_computed_a():
    from lowrank_lab.analysis.diagnose import ANGLE_METHODS
    from lowrank_lab.diagnose import ANGLE_METHODS as cli_view

    assert ANGLE_METHODS == ANGLE_TODAY and cli_view is ANGLE_METHODS
    assert ANGLE_METHODS == tuple(n for n, a in ADAPTERS.items() if a.computed_input_subspace)
    # The rule, stated from the entries' declared facts: an init that computes A from W or the data.
    for name, am in ADAPTERS.items():
        computed = am.init is not None and "A" not in am.drawn and bool(am.factorization or am.calibration)
        assert am.computed_input_subspace == computed, name
    drawn_or_none = {"lora", "slora", "nora", "kasa", "init-ab", "full", "gaussian", "orthogonal"}
    assert not drawn_or_none & set(ANGLE_METHODS)


def test_quant_methods_are_the_registry_entries_whose_base_is_a_function_of_w():
    from lowrank_lab.analysis.quantization import QUANT_METHODS
    from lowrank_lab.linalg import FACTORIZATIONS

    assert QUANT_METHODS == QUANT_TODAY
    assert QUANT_METHODS == tuple(n for n, a in ADAPTERS.items() if a.base_from_weight_alone)
    for name in QUANT_METHODS:
        am = ADAPTERS[name]
        assert (am.residual or am.replaces_base) and not am.drawn and am.calibration is None, name
        assert not FACTORIZATIONS[am.factorization].randomized, name
    # Left out by the rule, each for its reason: a randomized sketch, calibration data, random draws.
    assert not ADAPTERS["pissa-fast"].base_from_weight_alone  # randomized SVD
    assert not ADAPTERS["corda-ipm"].base_from_weight_alone  # needs calibration data
    assert not ADAPTERS["kasa"].base_from_weight_alone  # KaSA's A is drawn
    assert not ADAPTERS["lora"].base_from_weight_alone  # no residual
