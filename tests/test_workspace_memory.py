"""A workspace too large for the machine is a clear GraphcError naming the bytes and the batch size,
not NumPy's bare MemoryError: from forward / value_and_grad (CompiledModel.workspace) and from
train_step / fit (the Trainer's workspaces).

The model is an outer product over the batch, G = x.T @ (y * w): its inputs and parameters are
small (2 x 32 MiB at batch 1) but G needs 2**46 float32 = 256 TiB of workspace. That is more than
the 128 TiB a process can address on x86-64 (47-bit user space), so the allocation fails at once
whatever the overcommit setting: the test never takes real memory."""
from __future__ import annotations

import re

import numpy as np
import pytest

import graphc

from conftest import private_cache_dir
from graphc.core.errors import GraphcError

A = B = 2 ** 23
SPEC = f"""
name = "outer"
[dims]
N = "batch"
A = {A}
B = {B}
[inputs]
x = ["N", "A"]
y = ["N", "B"]
[params]
w = ["B"]
[graph]
G = "x.T @ (y * w)"
J = "sum(G)"
[outputs]
loss = "J"
[grad]
of = "J"
wrt = ["w"]
"""
ADDRESSABLE = 2 ** 47          # bytes of user address space on x86-64 (4-level paging)


_cache_dir = pytest.fixture(scope="module", autouse=True)(private_cache_dir)


@pytest.fixture(scope="module")
def model():
    return graphc.compile(graphc.parse_spec(SPEC, "outer.toml"), dtype="float32", threads=1,
                          optimizer=graphc.SGD(lr=0.1))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return dict(x=rng.standard_normal((1, A), dtype=np.float32), y=rng.standard_normal((1, B), dtype=np.float32))


def assert_names_bytes_and_batch(error: GraphcError, size: int, n: int) -> None:
    message = str(error)
    assert size > ADDRESSABLE                                # never satisfiable, even lazily
    assert str(size) in message or f"{size:,}" in message, message
    assert re.search(rf"batch size (N=)?{n}\b", message), message


@pytest.mark.parametrize("call", ["forward", "value_and_grad"])
def test_workspace_too_large_for_memory_is_a_graphc_error_naming_bytes_and_batch(model, batch, call):
    size = getattr(model.lib, f"{model.name}_workspace_size")(1)
    with pytest.raises(GraphcError) as caught:
        getattr(model, call)(**batch, w=np.ones(B, np.float32))
    assert_names_bytes_and_batch(caught.value, size, 1)


@pytest.mark.parametrize("call", ["train_step", "fit"])
def test_trainer_workspace_too_large_for_memory_is_a_graphc_error_naming_bytes_and_batch(model, batch, call):
    state = model.train_state({"w": np.ones(B, np.float32)})
    prefix = "fit_" if call == "fit" else ""
    size = getattr(model.lib, f"{model.name}_{prefix}workspace_size")(1)
    with pytest.raises(GraphcError) as caught:
        if call == "fit":
            model.fit(state, batch_size=1, progress=False, **batch)
        else:
            model.train_step(state, **batch)
    assert_names_bytes_and_batch(caught.value, size, 1)
