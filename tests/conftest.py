"""Shared fixtures: one private build cache per test session; the example specs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# The tests compare one thread with two bit for bit, on a machine their two workers keep busy: the
# kernels must run the threads asked for, not fall back to one (tests/test_gemm.py tests that
# fallback on its own build of the library).
os.environ.setdefault("GRAPHC_BUSY_HOLD", "0")

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_SPECS = sorted(p.name for p in EXAMPLES_DIR.glob("*.toml"))   # parametrize over these
# The big convolutional examples (MLPerf Tiny's keyword-spotting DS-CNN, ResNet-8): building and
# running their C takes tens of seconds under the sanitizers and in the strict builds of every
# compiler, so those per-example tests run SMALL_EXAMPLES; tests/test_kws.py and the benchmarks
# run the big ones, and tests/specs/small_cnn.toml takes the same ops through every C check.
BIG_EXAMPLES = {"kws_dscnn", "resnet8", "char_gpt"}
SMALL_EXAMPLES = sorted(p for p in EXAMPLES_DIR.glob("*.toml") if p.stem not in BIG_EXAMPLES)


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """The repository's examples/ folder (every spec in it must load and check)."""
    return EXAMPLES_DIR


@pytest.fixture(params=EXAMPLE_SPECS)
def example_spec(request) -> Path:
    """Each spec in examples/ in turn."""
    return EXAMPLES_DIR / request.param


@pytest.fixture(scope="session", autouse=True)
def graphc_cache_dir(tmp_path_factory):
    """Point GRAPHC_CACHE_DIR at a fresh folder for the session: tests never touch the user's cache,
    and each distinct model compiles once per session (tests that need their own cache monkeypatch it)."""
    root = tmp_path_factory.mktemp("graphc-cache")
    saved = os.environ.get("GRAPHC_CACHE_DIR")
    os.environ["GRAPHC_CACHE_DIR"] = str(root)
    yield root
    if saved is None:
        os.environ.pop("GRAPHC_CACHE_DIR", None)
    else:
        os.environ["GRAPHC_CACHE_DIR"] = saved


def private_cache_dir(tmp_path_factory):
    """A module's own GRAPHC_CACHE_DIR (its builds are not shared with other files). Use it as
    `_cache_dir = pytest.fixture(scope="module", autouse=True)(private_cache_dir)`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAPHC_CACHE_DIR", str(tmp_path_factory.mktemp("graphc-cache")))
        yield


def one_layer_spec(name: str = "wide", dx: int = 192, dh: int = 512, nc: int = 10, act: str = "relu",
                   outputs: dict[str, str] | None = None, grad: bool = True) -> str:
    """The notes' one-layer network, h = act(x Wᵀ + b1), θ = h Uᵀ + b2, J = CE(θ, y), as spec text."""
    outputs = {"loss": "J", "probs": "softmax(theta)"} if outputs is None else outputs
    text = f"""
name = "{name}"
[dims]
N = "batch"
Dx = {dx}
Dh = {dh}
Nc = {nc}
[inputs]
x = ["N", "Dx"]
y = {{ shape = ["N"], dtype = "int32" }}
[params]
W = ["Dh", "Dx"]
b1 = ["Dh"]
U = ["Nc", "Dh"]
b2 = ["Nc"]
[graph]
h = "{act}(x @ W.T + b1)"
theta = "h @ U.T + b2"
J = "cross_entropy(theta, y)"
[outputs]
""" + "".join(f'{k} = "{v}"\n' for k, v in outputs.items())
    return text + ('[grad]\nof = "J"\nwrt = ["W", "b1", "U", "b2"]\n' if grad else "")

