"""The fuzzer's own errors inside a hypothesis run (docs/fuzzing.md, "Failures inside hypothesis'
run"): a campaign ended three runs with a KeyError of a value name ('v4', 'v14') and a
FlakyFailure, and left no case file. The KeyError came from the float32 check's kink test reading
forward values from graph.grad's evaluation, in which a value equal to another (a second
relu(x1)) is merged away; the FlakyFailure from such an exception escaping the test function."""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc.core.reference import evaluate_values
from graphc.tools import fuzz
from graphc.tools import fuzz_checks

from conftest import private_cache_dir

_cache_dir = pytest.fixture(scope="module", autouse=True)(private_cache_dir)

# The generator's spec (seed 1, max_nodes=6) that the grad graph merges: v2 = relu(x1) is v1, so
# graphc.grad's graph (and train_graph's) has no value v2, the operand of the relu v3.
TWICE = """name = "fz"

[dims]
N = "batch"
D17 = 17

[inputs]
x1 = ["N", "D17"]

[params]
w1 = ["D17"]

[graph]
v1 = "relu(x1)"
v2 = "relu(x1)"
v3 = "relu(v2)"
v4 = "v3 * w1"
J = "mean(v4)"

[outputs]
loss = "J"
out1 = "v1"
out2 = "norm2(w1)"

[grad]
of = "J"
wrt = ["w1"]
"""


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fuzz_hypothesis_float32_kink_test_reads_values_the_grad_graph_merged(optimizer, tmp_path):
    """The float32 check of a spec with a value computed twice (relu(x1) as v1 and v2, v2 a relu's
    operand) runs its kink test and its train steps: before, it raised KeyError: 'v2'."""
    g = graphc.parse_spec(TWICE, "fz.toml")
    values = evaluate_values(graphc.grad(g, "J", ["w1"]), {"x1": np.ones((2, 17)), "w1": np.ones(17)})
    assert "v2" not in values          # what made the old kink test fail
    case = fuzz.Case(TWICE, batch=7, seed=3, optimizers=(optimizer,), threads1=False, float32=True)
    result = fuzz.run_case(case, tmp_path, only="float32")
    assert any(k.startswith("float32") for k in result.checks), result.checks
    assert result.checks[f"float32 train_step {optimizer}"] == 1 or any("kink" in k for k in result.checks), \
        result.checks


def test_fuzz_hypothesis_an_exception_outside_every_step_is_a_failure_signed_where_it_was_raised(monkeypatch, tmp_path):
    """A KeyError raised where no check's `step` turns it into a Failure (as the kink test's was:
    here the prediction graph's construction) comes out of run_case as a Failure of kind
    "fuzzer-bug" with its stage, signed by the exception and the fuzzer's frame: the campaign then
    shrinks it and writes its case file like any failure, and hypothesis never sees a bare exception."""
    import graphc.backend.codegen as codegen

    def broken(g):
        raise KeyError("v4")

    monkeypatch.setattr(codegen, "prediction_graph", broken)
    case = fuzz.Case(TWICE, batch=4, seed=0, optimizers=("sgd",), threads1=False)
    with pytest.raises(fuzz.Failure) as info:
        fuzz.run_case(case, tmp_path, only="finite differences")
    f = info.value
    assert f.kind == "fuzzer-bug" and "KeyError" in f.signature and "fuzz_checks.py" in f.signature, f.signature
    assert f.stage == "finite differences" and "'v4'" in f.message


def test_fuzz_hypothesis_a_campaign_writes_a_fuzzer_bug_as_a_case_file_not_a_hypothesis_error(monkeypatch, tmp_path):
    """In a campaign, such a KeyError is a failure of kind "fuzzer-bug", shrunk and written with the
    command that replays it; no run ends in a hypothesis error (KeyError or FlakyFailure)."""
    import graphc.backend.codegen as codegen

    def broken(g):
        raise KeyError("v14")

    monkeypatch.setattr(codegen, "prediction_graph", broken)
    monkeypatch.setattr(fuzz_checks, "_run_stages", _reference_and_fd_only(fuzz_checks._run_stages))
    plan = fuzz.Plan(optimizers="one", threads1_every=0, standalone_every=0, float32_every=0, entries=("tanh",),
                     shrink_seconds=20, sequence=False)
    summary = fuzz.campaign(4, seed=2, jobs=0, out=tmp_path, plan=plan, chunk=4)
    assert [f["kind"] for f in summary.failures] == ["fuzzer-bug"], summary.failures
    text = open(summary.failures[0]["file"]).read()
    assert "--replay" in text and "KeyError" in text and "[graph]" in text, text


def _reference_and_fd_only(run_stages):
    """_run_stages without the model stages (the test needs no C)."""
    def run(case, workdir, result, wanted, stage):
        return run_stages(case, workdir, result, wanted & {"reference", "finite differences"}, stage)
    return run
