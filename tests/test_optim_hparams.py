"""AdamW, and hyperparameters read by the C at run time (NAME_hparams, TrainState.set_hparams).

AdamW is checked against a NumPy AdamW written here (torch.optim.AdamW's update rule) and,
where PyTorch is installed, against torch itself; the run-time hyperparameters against a model
compiled with the same values: the same bits, since the C does the same arithmetic on them."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import graphc
from graphc.core.errors import ArgumentError
from graphc.autodiff.optimizers import OptimizerError

from conftest import EXAMPLES_DIR

SPEC = EXAMPLES_DIR / "one_layer.toml"
WRT = ["W", "b1", "U", "b2"]


def data(seed: int, n: int = 12):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 64)), rng.integers(0, 10, n).astype(np.int32)


def numpy_adamw(p, g, m, v, t, lr, beta1, beta2, eps, wd):
    """torch.optim.AdamW's step for one param (amsgrad off), in NumPy: decay, moments, update."""
    p = p * (1.0 - lr * wd)
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    step_size = lr / (1.0 - beta1 ** t)
    denom = np.sqrt(v) / np.sqrt(1.0 - beta2 ** t) + eps
    return p - step_size * m / denom, m, v


def test_adamw_c_train_step_equals_a_numpy_adamw():
    """Five AdamW steps in C against the same steps in NumPy on the gradients value_and_grad gives."""
    opt = graphc.AdamW(lr=1e-2, beta1=0.85, beta2=0.99, eps=1e-7, weight_decay=0.3)
    m = graphc.compile(str(SPEC), dtype="float64", optimizer=opt)
    grads_of = graphc.compile(str(SPEC), dtype="float64")
    params = graphc.init_params(m.graph, seed=3)
    state = m.train_state(params)
    ref = {k: v.copy() for k, v in params.items()}
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    for t in range(1, 6):
        x, y = data(t)
        _, grads = grads_of.value_and_grad(x=x, y=y, **ref)
        for k in WRT:
            ref[k], *moments[k] = numpy_adamw(ref[k], grads[k], *moments[k], t, opt.lr, opt.beta1,
                                              opt.beta2, opt.eps, opt.weight_decay)
        m.train_step(state, x=x, y=y)
        for k in WRT:
            np.testing.assert_allclose(state.params[k], ref[k], rtol=1e-11, atol=1e-13, err_msg=k)
            np.testing.assert_allclose(state.buffers[f"m/{k}"], moments[k][0], rtol=1e-11, atol=1e-14)
    assert int(state.buffers["t"][0]) == 5


def test_adamw_decay_is_decoupled_unlike_adams():
    """Adam's L2 term goes through the moments (and is normalized away with them), AdamW's decay
    multiplies the weights: with the same weight decay the two steps differ."""
    g = graphc.load(SPEC)
    x, y = data(0)
    out = {}
    for opt in (graphc.AdamW(lr=0.1, weight_decay=0.5), graphc.Adam(lr=0.1, weight_decay=0.5)):
        m = graphc.compile(g, dtype="float64", optimizer=opt)
        s = m.train_state(graphc.init_params(g, seed=0))
        m.train_step(s, x=x, y=y)
        out[opt.kind] = s.params["W"].copy()
    assert not np.allclose(out["adamw"], out["adam"])
    assert "p *= 1 - lr weight_decay" in graphc.compile(g, dtype="float64", optimizer=graphc.AdamW()).source


def test_adamw_matches_torch_optim_adamw():
    torch = pytest.importorskip("torch")
    opt = graphc.AdamW(lr=5e-3, beta1=0.9, beta2=0.98, eps=1e-8, weight_decay=0.05)
    m = graphc.compile(str(SPEC), dtype="float64", optimizer=opt)
    grads_of = graphc.compile(str(SPEC), dtype="float64")
    params = graphc.init_params(m.graph, seed=1)
    state = m.train_state(params)
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    topt = torch.optim.AdamW(list(tp.values()), lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps,
                             weight_decay=opt.weight_decay)
    for t in range(1, 4):
        x, y = data(t)
        _, grads = grads_of.value_and_grad(x=x, y=y, **{k: v.detach().numpy() for k, v in tp.items()})
        for k, v in tp.items():
            v.grad = torch.tensor(grads[k])
        topt.step()
        m.train_step(state, x=x, y=y)
    for k in WRT:
        np.testing.assert_allclose(state.params[k], tp[k].detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("opt, change", [
    (graphc.SGD(lr=0.1), dict(lr=0.03)),                      # plain SGD: lr read inside the GEMM epilogue
    (graphc.SGD(lr=0.1, momentum=0.9, weight_decay=1e-3), dict(lr=0.02, momentum=0.5, weight_decay=0.01)),
    (graphc.Adam(lr=1e-2, weight_decay=1e-3), dict(lr=3e-3, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.1)),
    (graphc.AdamW(lr=1e-2), dict(lr=2e-3, beta1=0.7, beta2=0.9, eps=1e-5, weight_decay=0.2)),
], ids=["sgd", "momentum", "adam", "adamw"])
def test_hparams_set_at_run_time_give_the_bits_of_a_model_compiled_with_them(opt, change):
    g = graphc.load(SPEC)
    m = graphc.compile(g, dtype="float64", optimizer=opt)
    m2 = graphc.compile(g, dtype="float64", optimizer=dataclasses.replace(opt, **change))
    params = graphc.init_params(g, seed=2)
    a, b = m.train_state(params), m2.train_state(params)
    x, y = data(1)
    m.train_step(a, x=x, y=y)          # a step with the compiled values, then the change
    a.set_hparams(**change)
    assert a.hparams == dataclasses.asdict(dataclasses.replace(opt, **change))
    b.set_hparams(**{k: getattr(opt, k) for k in change})
    m2.train_step(b, x=x, y=y)
    b.set_hparams(**change)
    for seed in (2, 3):
        x, y = data(seed)
        m.train_step(a, x=x, y=y)
        m2.train_step(b, x=x, y=y)
    a_fit = m.fit(a, x=x, y=y, batch_size=5, epochs=1, progress=False)
    b_fit = m2.fit(b, x=x, y=y, batch_size=5, epochs=1, progress=False)
    assert a_fit == b_fit
    for k in WRT:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)


def test_hparams_the_compiled_values_stand_for_a_null_pointer():
    """NAME_train_step(..., NULL, ...) steps with the values compiled in, as the struct holding them does."""
    m = graphc.compile(str(SPEC), dtype="float64", optimizer=graphc.SGD(lr=0.07, momentum=0.5))
    lay = m.functions["train_step"].train_layout
    ffi, lib = m.ffi, m.lib
    x, y = data(4, n=6)
    params = graphc.init_params(m.graph, seed=0)
    results = []
    for hp in (ffi.NULL, ffi.new("one_layer_hparams *", [0.07, 0.5])):
        arrays = {"x": x, "y": y, **{k: v.copy() for k, v in params.items()}}
        state = {k: np.zeros(shape) for k, (shape, _dt) in lay.state.items()}
        outs = {"loss": np.zeros(1), "probs": np.zeros((6, 10))}
        ws = np.zeros(lib.one_layer_workspace_size(6) // 8 + 16)
        ws = ws[(-ws.ctypes.data % 64) // 8:]
        args = []
        for role, name, _c in lay.step_args:
            if role == "hparams":
                args.append(hp)
            else:
                arr = arrays[name] if role in ("input", "param") else state[name] if role == "state" else outs[name]
                args.append(ffi.from_buffer("int32_t[]" if arr.dtype == np.int32 else "double[]", arr))
        assert lib.one_layer_train_step(6, *args, ffi.from_buffer(ws)) == 0
        results.append(arrays["W"])
    np.testing.assert_array_equal(*results)
    assert not np.array_equal(results[0], params["W"])


def test_hparams_refuse_a_term_compiled_out_an_unknown_name_and_a_bad_value():
    m = graphc.compile(str(SPEC), dtype="float64", optimizer=graphc.SGD(lr=0.1))
    s = m.train_state(graphc.init_params(m.graph, seed=0))
    x, y = data(0)
    with pytest.raises(ArgumentError, match="lr_max"):
        s.set_hparams(lr_max=1.0)
    with pytest.raises(OptimizerError, match="lr"):
        s.set_hparams(lr=-1.0)
    s.set_hparams(momentum=0.9)        # plain SGD was compiled without a momentum buffer
    with pytest.raises(ArgumentError, match="momentum") as err:
        m.train_step(s, x=x, y=y)
    assert "compile with a nonzero momentum" in str(err.value)
    s.set_hparams(momentum=0.0, lr=0.05)
    m.train_step(s, x=x, y=y)


def test_hparams_survive_save_and_load(tmp_path):
    m = graphc.compile(str(SPEC), dtype="float64", optimizer=graphc.AdamW(lr=1e-2))
    s = m.train_state(graphc.init_params(m.graph, seed=0))
    s.set_hparams(lr=1e-4, weight_decay=0.25)
    loaded = m.load_state(s.save(tmp_path / "s.npz"))
    assert loaded.hparams["lr"] == 1e-4 and loaded.hparams["weight_decay"] == 0.25
    x, y = data(0)
    m.train_step(s, x=x, y=y)
    m.train_step(loaded, x=x, y=y)
    np.testing.assert_array_equal(s.params["W"], loaded.params["W"])


def test_hparams_in_the_emitted_header():
    from graphc.backend.codegen import generate
    g = graphc.load(SPEC)
    for opt, default in ((graphc.SGD(lr=0.25), "{ 0.25 }"), (graphc.AdamW(), "{ 0.001, 0.9, 0.999, 1e-08, 0.01 }")):
        c = generate(g, *g.grad_spec, optimizer=opt)
        assert f"#define ONE_LAYER_HPARAMS_DEFAULT {default}" in c.header
        assert "} one_layer_hparams;" in c.header and "const one_layer_hparams *hparams" in c.header
        assert "gc_hp = hparams ? hparams : &gc_hparams_default;" in c.source
        assert "(gc_real)0.25" not in c.source and "gc_hp->lr" in c.source   # no literal learning rate
