"""Facts stated once (issue 18): option defaults come from the init signatures, and the core-only
family of the training harness from the adapter registry."""

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
