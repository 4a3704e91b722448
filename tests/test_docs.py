"""The examples in docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = ["gradfit", "gradfit._threads", "gradfit.fitting.fit", "gradfit.formula.parse", "gradfit.formula.compile",
           "gradfit.models.formula", "gradfit.models.function", "gradfit.optim.registry", "gradfit.data.split",
           "gradfit.data.examples", "gradfit.fitting.many", "gradfit.optim.linear", "gradfit.optim.lm", "gradfit.fitting.scipy_compat",
           "gradfit.stats", "gradfit.goodness_of_fit", "gradfit.tuning", "gradfit.results.fit_result", "gradfit.data.tables", "gradfit.data.io",
           "gradfit.options", "gradfit.fitting.keywords", "gradfit.tuning.space",
           "gradfit.models.jacobian", "gradfit.train.memory", "gradfit.results.schema", "gradfit.formula.c_code",
           "gradfit.data.float32"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
