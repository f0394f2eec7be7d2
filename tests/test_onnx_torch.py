"""A PyTorch model exported to ONNX, imported by graphc.from_onnx, compiled, and checked against
PyTorch: the forward pass, and fine-tuning (a loss added with the builder, SGD steps in C) against
the same steps of torch.optim.SGD. Runs where torch and onnx are installed (optional)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="optional: compares with PyTorch when it is installed")
pytest.importorskip("onnx", reason="pip install 'graphc[onnx]'")

import graphc  # noqa: E402


def export(net, example, path, dynamic=("N",), **more):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(path), input_names=["x"], output_names=["out"],
                          dynamic_axes={"x": {0: dynamic[0]}, "out": {0: dynamic[0]}}, dynamo=False,
                          opset_version=17, **more)


def test_onnx_torch_mlp_round_trip_forward_and_fine_tuning(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 32), torch.nn.Tanh(),
                              torch.nn.Linear(32, 10))
    x = torch.randn(37, 64)
    export(net, x[:4], tmp_path / "mlp.onnx")
    g, params = graphc.from_onnx(tmp_path / "mlp.onnx")
    assert list(g.inputs) == ["x"] and "out" in g.outputs and g.symbolic_dims == ["N"]
    m = graphc.compile(g, dtype="float32", threads=1)
    got = m.forward(x=x.numpy(), **params)["out"]
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-5, atol=1e-6)

    y = g.input("y", ("N",), dtype="int32")                      # fine-tune: a loss with the builder
    g.output("loss", graphc.cross_entropy(g["out"], y))
    mt = graphc.compile(g, grad_of="loss", wrt=list(params), dtype="float64", optimizer=graphc.SGD(lr=0.1),
                        threads=1)
    state = mt.train_state(params)
    net64 = net.double()
    opt = torch.optim.SGD(net64.parameters(), lr=0.1)
    labels = torch.randint(0, 10, (37,))
    for step in range(5):
        rows = slice(step * 7, step * 7 + 7)
        outs = mt.train_step(state, x=x[rows].double().numpy(), y=labels[rows].numpy().astype(np.int32))
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net64(x[rows].double()), labels[rows])
        loss.backward()
        opt.step()
        assert abs(float(outs["loss"]) - loss.item()) < 1e-10
    torch_params = dict(net64.named_parameters())
    for name, value in state.params.items():
        # from_onnx names an initializer "0.weight" as v_0_weight: map it back
        key = name[2:].replace("_", ".", 1) if name.startswith("v_") else name
        np.testing.assert_allclose(value, torch_params[key].detach().numpy(), rtol=1e-10, atol=1e-12)


def test_onnx_torch_cnn_round_trip_predict_and_training_mode(tmp_path):
    """A PyTorch CNN (conv + batch norm + relu, max and average pooling, a depthwise conv, dropout,
    global average pooling, a dense head) exported in eval mode: graphc's predict computes what
    torch's eval mode computes (the running statistics become graphc model state), and graphc's
    forward what torch's train mode computes (batch statistics; dropout p=0 so both agree)."""
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AvgPool2d(2), nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Dropout(0.0), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 5))
    with torch.no_grad():                      # running statistics that are not the defaults
        for mod in net:
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    net.eval()
    x = torch.randn(6, 3, 12, 12)
    # (PRESERVE: the exporter would otherwise fold each batch norm into its convolution)
    export(net, x[:2], tmp_path / "cnn.onnx", training=torch.onnx.TrainingMode.PRESERVE)
    g, params = graphc.from_onnx(tmp_path / "cnn.onnx")
    assert len(g.states) == 4 and {n.op.name for n in g.nodes} >= {"conv2d", "batch_norm", "max_pool2d",
                                                                     "avg_pool2d", "adaptive_avg_pool2d"}
    m = graphc.compile(g, dtype="float64", threads=1)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    got = m.predict(x=x.double().numpy(), **p64)["out"]
    np.testing.assert_allclose(got, net.double()(x.double()).detach().numpy(), rtol=1e-9, atol=1e-10)
    net.train()
    train_out = m.forward(x=x.double().numpy(), **p64)["out"]
    np.testing.assert_allclose(train_out, net(x.double()).detach().numpy(), rtol=1e-9, atol=1e-10)
