"""A traced NASNet op computes TF 'SAME' padding from its input's size (nasnet_det/models/ops.py): traced (and
exported to ONNX) at one size, run at others -- odd, smaller than the stride, landscape, portrait -- it gives the
eager op's result. Without that, the traced graph keeps the trace size's padding as constants."""

import pytest
import torch
from torch import nn

from nasnet_det.models.ops import Conv2dSame, FactorizedReduce, Pool2dSame

TRACE_SIZE = (8, 8)
OTHER_SIZES = [(7, 9), (1, 1), (2, 3), (33, 17)]


def ops() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "max_pool_3x3_s2": Pool2dSame("max", 3, 2),
        "avg_pool_3x3_s2_tf": Pool2dSame("avg", 3, 2, pad_mode="tf"),
        "avg_pool_3x3_s2_timm": Pool2dSame("avg", 3, 2, pad_mode="timm"),
        "avg_pool_3x3_s1_tf": Pool2dSame("avg", 3, 1, pad_mode="tf"),
        "conv_5x5_s2": Conv2dSame(3, 4, 5, 2),
        "factorized_reduce": FactorizedReduce(3, 4, 2, nn.BatchNorm2d).eval(),
    }


@pytest.mark.parametrize("name", list(ops()))
def test_a_traced_op_pads_for_the_size_it_runs_at(name):
    op = ops()[name]
    traced = torch.jit.trace(op, torch.randn(1, 3, *TRACE_SIZE), check_trace=False)
    for size in OTHER_SIZES:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(traced(x), op(x), rtol=1e-5, atol=1e-6, msg=f"{name} at {size}")


def test_an_onnx_export_pads_for_the_size_it_runs_at(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net = nn.Sequential(Conv2dSame(3, 4, 3, 2), Pool2dSame("avg", 3, 2), Pool2dSame("max", 3, 2),
                        FactorizedReduce(4, 4, 2, nn.BatchNorm2d)).eval()
    path = tmp_path / "ops.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 64, 64),), str(path), opset_version=17, dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {2: "h", 3: "w"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in [(63, 65), (7, 9), (33, 17), (100, 31)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected = net(x).numpy()
        got = session.run(None, {"x": x.numpy()})[0]
        assert got.shape == expected.shape and abs(got - expected).max() < 1e-5, size
