"""The default memory layout computes what a plain reference computes, for every module the project trains.

tests/models/layout_sweep.py runs the cases in forked processes (up to BATCH_SIZE cases each; a case that fails
there is judged again in a fork of its own) under a time limit per case, so a wrong result, a segfault or a hang
fails here with the module, stride, channel count, batch, threads and oneDNN ISA named. CI runs every module x
stride x channel count (1..32, 1..16 capped to AVX2; f = 8..32 for the detection networks, 8..16 capped to AVX2,
2..8 for the CIFAR ones) with batch and threads rotated (every pair for the narrow stride-2 cases of the
strided-1x1 kinds), on this CPU's ISA and, on an AVX-512 CPU, capped to AVX2; ``python
tests/models/layout_sweep.py`` runs every combination (about 15 minutes per ISA on the 2-core development CPU, more
with the CIFAR networks, measured when each case had a fork of its own).
"""

from __future__ import annotations

import layout_sweep as ls
import pytest


def _failures(outcomes: list[ls.Outcome]) -> str:
    return "\n".join(o.describe() for o in outcomes if o.failed)


# The kernels' channel blocks: 16 floats on AVX-512, 8 on AVX2. A narrow-channel fault lies below one block;
# CI covers two (the native ISA: every count 1..32).
MAX_CHANNELS = {"AVX2": 16}


@pytest.mark.slow  # minutes: started first (tests/conftest.py)
@pytest.mark.timeout(900)
@pytest.mark.parametrize("isa", ls.available_isas())
def test_every_module_matches_the_plain_reference(isa: str):
    cases = ls.rotated_cases(ls.available_isas().index(isa), MAX_CHANNELS.get(isa, 32))
    outcomes = ls.sweep(cases, isa)
    assert len(outcomes) == len(cases)
    assert not any(o.failed for o in outcomes), "default layout differs from the plain reference:\n" + \
        _failures(outcomes)


def test_rotated_cases_cover_every_module_stride_channel_count_batch_and_thread_count():
    cases = ls.rotated_cases(0)
    for name in ls.MODULE_NAMES:
        kind = ls.MODULE_KINDS[name]
        mine = [c for c in cases if c.module == name]
        assert {c.stride for c in mine} == set(kind.strides), name
        expected = {c for c in ls.CHANNELS if c >= kind.min_channels}
        if name in ls.NETWORK_KINDS:
            expected = set(ls.network_filters(name))
        assert {c.channels for c in mine} == expected, name
        assert {(c.batch, c.threads) for c in mine} == {(b, t) for b in ls.BATCHES for t in ls.THREADS}, name
    # oneDNN#6035's kernel: each narrow stride-2 width of a strided 1x1 kind with every batch and thread count.
    for name in ls.STRIDED_1X1_KINDS:
        for c in range(1, 16):
            pairs = {(x.batch, x.threads) for x in cases if (x.module, x.stride, x.channels) == (name, 2, c)}
            assert pairs == {(b, t) for b in ls.BATCHES for t in ls.THREADS}, (name, c)
    # Another ISA sees another rotation: together they run more pairs.
    assert set(cases) != set(ls.rotated_cases(1))
    # a cap on the channels caps the networks' f too
    capped = ls.rotated_cases(1, 16)
    assert max(c.channels for c in capped) == 16
    assert {c.channels for c in capped if c.module == "c4_backbone"} == {8, 9, 10, 11, 12, 16}


def test_a_wrong_result_a_segfault_and_a_hang_fail_naming_the_case():
    cases = [ls.Case("selftest_wrong", 1, 4, 2, 1), ls.Case("conv_3x3", 1, 4, 2, 1),
             ls.Case("selftest_small_param", 1, 8, 16, 2),
             ls.Case("selftest_segfault", 1, 5, 1, 2), ls.Case("selftest_hang", 1, 6, 16, 1),
             ls.Case("conv_3x3", 2, 7, 1, 1)]
    outcomes = ls.sweep(cases, "native", timeout_s=5)
    status = {o.case.module + str(o.case.stride): o.status for o in outcomes}
    assert status == {"selftest_wrong1": "mismatch", "conv_3x31": "ok", "selftest_small_param1": "mismatch",
                      "selftest_segfault1": "crash", "selftest_hang1": "hang", "conv_3x32": "ok"}
    text = _failures(outcomes)
    assert "selftest_wrong stride 1, 4 channels, batch 2, 1 thread (native ISA): mismatch" in text
    assert "selftest_small_param stride 1, 8 channels, batch 16, 2 threads (native ISA): mismatch: " in text
    assert "at small gradient" in text  # the small tensor is named, though its gradient is ~1/100 of conv's
    assert "selftest_segfault stride 1, 5 channels, batch 1, 2 threads (native ISA): crash: killed by SIGSEGV" in text
    assert ("selftest_hang stride 1, 6 channels, batch 16, 1 thread (native ISA): hang: no result after 5 s, "
            "nor after 10 s on a second try") in text


def test_cases_share_a_process_but_a_failure_is_judged_alone():
    """Up to BATCH_SIZE cases run in one forked process. A case that fails after others runs again alone: a crash
    there is a crash; one that fails only after another case (which may have damaged the process) still fails,
    saying that it passed alone."""
    cases = [ls.Case("conv_3x3", 1, 4, 2, 1), ls.Case("selftest_damage", 1, 4, 2, 1),
             ls.Case("selftest_fragile", 1, 4, 2, 1), ls.Case("conv_3x3", 2, 5, 1, 2),
             ls.Case("selftest_segfault", 1, 5, 1, 1), ls.Case("conv_3x3", 1, 6, 1, 1)]
    outcomes = ls.sweep(cases, "native", timeout_s=30)
    assert [o.status for o in outcomes] == ["ok", "ok", "mismatch", "ok", "crash", "ok"]
    assert "selftest_fragile stride 1, 4 channels, batch 2, 1 thread (native ISA): mismatch: " in outcomes[2].describe()
    assert outcomes[2].detail.endswith(
        "(after 2 other cases in one process: conv_3x3 stride 1, 4 channels, batch 2, 1 thread .. selftest_damage "
        "stride 1, 4 channels, batch 2, 1 thread); alone it passed: an earlier case may have damaged the process, "
        "or the case is not deterministic")
    assert outcomes[4].detail.startswith("killed by SIGSEGV")
    # alone, the fragile case passes
    assert [o.status for o in ls.sweep(cases[2:3], "native", timeout_s=30)] == ["ok"]
    # a hang after other cases is tried alone, then alone with twice the time; one that passes alone (here: slow
    # only after selftest_damage) was a slow machine
    cases = [ls.Case("conv_3x3", 1, 4, 2, 1), ls.Case("selftest_hang", 1, 4, 2, 1),
             ls.Case("selftest_damage", 1, 4, 2, 1), ls.Case("selftest_stall", 1, 4, 2, 1)]
    outcomes = ls.sweep(cases, "native", timeout_s=2)
    assert [o.status for o in outcomes] == ["ok", "hang", "ok", "ok"]
    assert outcomes[1].detail == "no result after 2 s, nor after 4 s on a second try"


def test_an_unknown_module_is_named():
    with pytest.raises(ValueError, match="unknown module 'conv_9x9'; known: identity, "):
        ls.cases(["conv_9x9"])


@pytest.fixture
def torch_threads():
    """run_case sets the process's thread count: give the test process its own back afterwards."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_relu_input_within_rounding_of_zero_passes_and_would_fail_without_the_mask_replay(torch_threads,
                                                                                              monkeypatch):
    # selftest_kink: one channel's ReLU input is -2^-26 in float32 and +2^-26 in float64 (correct kernels on both
    # sides), as issue 31's BatchNorm output was -1.03e-7 / +1.03e-7: that channel's gradient is zero on one side
    # only. The sweep's reference takes the tested run's side and says how many inputs it replayed.
    case = ls.Case("selftest_kink", 1, 4, 2, 1)
    ratio, where = ls.run_case(case)
    assert ratio <= 1.0, where
    assert "64 ReLU inputs within rounding of zero had the other sign in float64" in where
    # Without the replay the same correct computation fails: the replay is what keeps it a pass.
    monkeypatch.setattr(ls.ReluReplay, "replay", lambda self, module, count=False: [])
    ratio, where = ls.run_case(case)
    assert ratio > 1.0 and where.startswith("input 0 gradient"), where


def test_issue_31_sep_conv_3x3_repro_passes_the_sweeps_judgement(torch_threads):
    """Issue 31's report, on its own inputs: sep_conv_3x3 (stride 2, 10 channels) + a 3x3 conv, batch 16,
    32 px, channels_last, 2 threads. Measured on the development CPU (native and ONEDNN_MAX_CPU_ISA=AVX2):
    one bn_sep_1 output, +1.03e-7 in float64, is -1.03e-7 in float32 (ATen's channels_last BatchNorm sums its
    batch mean less exactly than the NCHW one), so act_2 drops it; against an unreplayed float64 reference
    the 1x1 conv's weight gradient is 1.1e-3 of its largest entry off, all in that channel's row (rank 1),
    3.5e-6 once the masks are replayed; the 1x1 weight-gradient kernel itself is 1.9e-7 from an einsum on the
    same grad_output and input (docs/reliability.md). A kernel defect would still fail here."""
    import torch
    from torch import nn

    from nasnet_det.models.ops import build_op

    torch.set_num_threads(2)
    torch.manual_seed(1010)
    x = torch.randn(16, 10, 32, 32)
    torch.manual_seed(0)
    module = nn.Sequential(build_op("sep_conv_3x3", 10, 10, 2, lambda k: nn.BatchNorm2d(k)),
                           nn.Conv2d(10, 10, 3, padding=1)).train()
    plain = ls._reference(module)
    exact = ls._reference(module).double()
    module = module.to(memory_format=torch.channels_last)
    relus = ls.ReluReplay()
    test = ls._run(module, [x], "channels_last", 1, torch.float32, relus.record(module))
    with torch.backends.mkldnn.flags(enabled=False):
        plain_result = ls._run(plain, [x], "nchw", 1, torch.float32, relus.replay(plain))
        truth = ls._run(exact, [x], "nchw", 1, torch.float64, relus.replay(exact, count=True))
    ratio, where = ls.compare(test, plain_result, truth)
    assert ratio <= 1.0, f"{where} ({relus.flipped} ReLU inputs replayed)"
