"""The default memory layout computes what a plain reference computes, for every module the project trains.

tests/layout_sweep.py runs each case in its own forked process under a time limit, so a wrong result, a
segfault or a hang fails here with the module, stride, channel count, batch, threads and oneDNN ISA named.
CI runs every module x stride x channel count (1..32; 1..16 capped to AVX2; f = 8..32 for the detection
networks, 2..8 for the CIFAR ones) with batch and threads rotated (every pair for the narrow stride-2 cases of
the strided-1x1 kinds), on this CPU's ISA and, on an AVX-512 CPU, capped to AVX2; ``python
tests/layout_sweep.py`` runs every combination (about 15 minutes per ISA on the 2-core development CPU, more
with the CIFAR networks).
"""

from __future__ import annotations

import layout_sweep as ls
import pytest


def _failures(outcomes: list[ls.Outcome]) -> str:
    return "\n".join(o.describe() for o in outcomes if o.failed)


# The kernels' channel blocks: 16 floats on AVX-512, 8 on AVX2. A narrow-channel fault lies below one block;
# CI covers two (the native ISA: every count 1..32).
MAX_CHANNELS = {"AVX2": 16}


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


def test_an_unknown_module_is_named():
    with pytest.raises(ValueError, match="unknown module 'conv_9x9'; known: identity, "):
        ls.cases(["conv_9x9"])
