#!/usr/bin/env python
"""How well the ``lut`` latency estimator ranks cells: its predicted latency against the measured latency of
the C4 (or FPN) detection backbone (``measure``, the median of repeats) for random cells of the search space, at
detection input size on this machine's CPU with a fixed thread count. Spearman rank correlation and the mean
absolute percentage error; the peer is mult-adds (the ``flops`` estimator) as a latency proxy (Spearman only:
it has no milliseconds). Goal (issue 20): Spearman >= 0.9. Each cell is measured twice: the
Spearman between the two measurements is the ceiling any estimator can reach on the machine as loaded.
``--device cuda`` compares them on this machine's GPU (the table's units timed with CUDA events; recorded as
``bench_latency_lut_cuda``, beside the CPU rows).

    python bench/bench_latency_lut.py [--cells 20] [--input-size 448] [--num-cells 2] [--filters 32] [--backbone C4]
                                      [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from _common import print_row, record, row
from scipy.stats import spearmanr

from nasnet_det.latency import LatencySetting, make_estimator
from nasnet_det.search_space import SearchSpace


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=20, help="random genotypes compared")
    p.add_argument("--input-size", type=int, default=448)
    p.add_argument("--num-cells", type=int, default=2, help="N of the backbone")
    p.add_argument("--filters", type=int, default=32, help="f of the backbone")
    p.add_argument("--backbone", default="C4", choices=("FPN", "C4"),
                   help="C4 (default): the trunk is all cells; FPN adds 256-channel convs the cell does not change")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the backbone and its units are timed")
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing on the CPU")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-record", action="store_true")
    return p


def main() -> None:
    args = build_parser().parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        from nasnet_det.engine.devices import cuda_unavailable_reason

        raise SystemExit(f"error: --device cuda but CUDA is not usable here: {cuda_unavailable_reason()}")
    # uniform samples of the space, as random search draws them
    space = SearchSpace(5)
    decisions = space.sample(args.cells, torch.Generator().manual_seed(args.seed)).tolist()
    with tempfile.TemporaryDirectory() as cache:  # a fresh table: its build time is part of the result
        setting = LatencySetting(input_size=args.input_size, num_cells=args.num_cells, filters=args.filters,
                                 backbone=args.backbone, threads=args.threads, warmup=1, repeats=args.repeats,
                                 cache_dir=cache, device=args.device)
        lut, measure, flops = (make_estimator(n, setting) for n in ("lut", "measure", "flops"))
        t0 = time.perf_counter()
        lut.build()
        build_s = time.perf_counter() - t0
        built_units = len(lut.units)  # units the covering cells did not reach are timed when a cell first needs them
        predicted, measured, again, macs = [], [], [], []
        t0 = time.perf_counter()
        for i in range(args.cells):
            g = space.genotype(decisions[i])
            predicted.append(lut.latency_ms(g))
            measured.append(measure.latency_ms(g))
            again.append(measure.latency_ms(g))  # a second measurement: how repeatable the reference is here
            macs.append(flops.profile(g).mult_adds)
            print(f"cell {i}: lut {predicted[-1]:.1f} ms, measured {measured[-1]:.1f} / {again[-1]:.1f} ms, "
                  f"{macs[-1] / 1e6:.0f} M mult-adds", flush=True)
        compare_s = time.perf_counter() - t0
    p, m = np.array(predicted), np.array(measured)
    rho_lut = float(spearmanr(p, m).statistic)
    rho_flops = float(spearmanr(macs, m).statistic)
    rho_again = float(spearmanr(again, m).statistic)  # the noise ceiling of any estimator here
    mape = float(np.mean(np.abs(p - m) / m) * 100)
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"Spearman(lut, measure) on {device}: {rho_lut:.3f} (the same cells measured twice: {rho_again:.3f}; "
          f"mult-adds: {rho_flops:.3f})", flush=True)
    setting_info = dict(device=device, cells=args.cells, input_size=args.input_size, num_cells=args.num_cells,
                        filters=args.filters, backbone=args.backbone, threads=args.threads,
                        repeats=args.repeats, lut_units_built=built_units,
                        lut_units_added_on_demand=len(lut.units) - built_units,
                        lut_build_s=build_s, compare_s=compare_s,
                        measured_ms_min=float(m.min()), measured_ms_max=float(m.max()),
                        spearman_measured_twice=rho_again,
                        mape_measured_twice=float(np.mean(np.abs(np.array(again) - m) / m) * 100))
    name = f"lut vs measured, {args.backbone} {args.num_cells}@f{args.filters}, {args.input_size}px, {args.device}"
    rows = [row(name, "spearman", rho_lut, rho_flops, "mult-adds (flops estimator) vs measured", True,
                **setting_info),
            row(name, "MAPE %", mape, float("nan"), "- (mult-adds have no ms)", False, **setting_info)]
    for r in rows:
        print_row(r)
    if not args.no_record:
        timing = f"{args.threads} torch thread(s)" if args.device == "cpu" else \
            f"on {device}, the table's units timed with CUDA events over {args.repeats} back-to-back calls"
        record("bench_latency_lut" if args.device == "cpu" else "bench_latency_lut_cuda", rows, notes=[
            f"goal Spearman >= 0.9; {args.cells} uniform random cells; measured = median of {args.repeats} runs after "
            f"1 warm-up, {timing}; the table built fresh ({built_units} units, {build_s:.0f} s) "
            f"in a temporary folder, {len(lut.units) - built_units} more units timed on demand during the comparison",
            f"noise ceiling: the same cells measured twice agree to Spearman {rho_again:.2f} (MAPE "
            f"{setting_info['mape_measured_twice']:.1f}%) on this machine as loaded (loadavg_1min in 'machine')"])


if __name__ == "__main__":
    main()
