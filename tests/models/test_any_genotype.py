"""Any genotype the search can produce builds at paper-scale F and trains under DDP (issue 9)."""

from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nasnet_det.genotypes import get_genotype
from nasnet_det.models import create_model
from nasnet_det.models.cell import leaves_input_unused, output_multiplier, unused_inputs
from nasnet_det.space import COMBINES, OPS, Block, CellSpec, Genotype


def random_cell(rng: np.random.Generator, num_blocks: int = 5) -> CellSpec:
    blocks = []
    for b in range(num_blocks):
        i1, i2 = (int(v) for v in rng.integers(0, 2 + b, size=2))
        o1, o2 = (OPS[int(v)] for v in rng.integers(0, len(OPS), size=2))
        blocks.append(Block(i1, i2, o1, o2, COMBINES[int(rng.integers(0, 2))]))
    return CellSpec(tuple(blocks)).validate()


def random_genotypes(n: int, seed: int = 0) -> list[Genotype]:
    rng = np.random.default_rng(seed)
    return [Genotype(random_cell(rng), random_cell(rng), f"random_{i}") for i in range(n)]


def test_random_genotypes_of_every_concat_width_build_at_paper_filters():
    genotypes = random_genotypes(60)
    widths = {output_multiplier(g.normal) for g in genotypes}
    assert len(widths) >= 4  # the sample covers many concat widths, most not dividing 768 / 4 = 192
    for g in genotypes[:12] + [g for g in genotypes if 192 % output_multiplier(g.normal)][:4]:
        for F in (768, 1056):
            model = create_model("nasnet_a_cifar", genotype=g, num_cells=1, penultimate_filters=F, aux_head=False)
            per_f = 4 * output_multiplier(g.normal)
            assert model.num_features % per_f == 0 and abs(model.num_features - F) <= per_f // 2 + 1
            if F == 768:
                out = model(torch.randn(2, 3, 32, 32))
                assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_unused_input_is_detected():
    nasnet_a = get_genotype("nasnet_a")
    assert not leaves_input_unused(nasnet_a)
    # Every block reads state 0 only: the previous-previous input (state 1) is ignored.
    cell = CellSpec(tuple(Block(0, 0, "sep_conv_3x3", "identity") for _ in range(5))).validate()
    assert unused_inputs(cell) == (1,)
    assert leaves_input_unused(Genotype(cell, nasnet_a.reduce, "ignores_h_prev"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, genotype_json: str, result) -> None:
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        g = Genotype.from_json(genotype_json)
        torch.manual_seed(0)
        model = create_model("nasnet_a_cifar", genotype=g, num_cells=1, filters=4, aux_head=False,
                             drop_path_keep_prob=1.0)
        ddp = DistributedDataParallel(model, find_unused_parameters=leaves_input_unused(g))
        opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
        for _ in range(2):  # the second step is where DDP fails without find_unused_parameters
            opt.zero_grad()
            ddp(torch.randn(2, 3, 32, 32)).sum().backward()
            opt.step()
        result[rank] = 1
    finally:
        dist.destroy_process_group()


def test_cell_ignoring_an_input_trains_under_ddp():
    nasnet_a = get_genotype("nasnet_a")
    cell = CellSpec(tuple(Block(0, 0, "sep_conv_3x3", "identity") for _ in range(5))).validate()
    g = Genotype(cell, nasnet_a.reduce, "ignores_h_prev")
    result = mp.get_context("spawn").Array("i", 2)
    mp.spawn(_ddp_worker, args=(2, _free_port(), g.to_json(), result), nprocs=2, join=True)
    assert list(result) == [1, 1]


def test_searched_genotype_through_the_training_and_detection_configs_at_paper_filters(tmp_path):
    from detectron2.modeling import build_backbone

    from nasnet_det.classification.config import load_config
    from nasnet_det.detection.config import get_nasnet_cfg

    g = next(g for g in random_genotypes(60, seed=1) if 192 % output_multiplier(g.normal))  # 768 does not fit
    path = g.save(tmp_path / "searched.json")
    cfg = load_config(None, ["MODEL.NASNET.GENOTYPE", str(path), "MODEL.NASNET.NUM_CELLS", "1",
                             "MODEL.NASNET.PENULTIMATE_FILTERS", "768", "MODEL.NASNET.FILTERS", "0"])
    net = create_model(cfg, dataset="cifar", num_classes=10)
    assert abs(net.num_features - 768) <= 2 * output_multiplier(g.normal)
    det = get_nasnet_cfg()
    det.MODEL.NASNET.GENOTYPE, det.MODEL.NASNET.NUM_CELLS = str(path), 1
    det.MODEL.NASNET.PENULTIMATE_FILTERS, det.MODEL.NASNET.FILTERS = 1056, 0
    det.MODEL.BACKBONE.NAME = "build_nasnet_c4_backbone"
    assert build_backbone(det).output_shape()["c4"].channels > 0
