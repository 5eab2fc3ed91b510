#!/usr/bin/env python
"""Search controller cost: sampling a batch of architectures and one PPO update on their rewards, against
what a step of the search costs anyway (one training step of one small child network), same process.

There is no other NASNet controller to race, so the reference is the work the controller sits between: the
ratio says how many controller rounds (sample + update of ``--batch`` children) fit in the time of ONE child
training step (NASNet-A, CIFAR layout ``--child-cells``@``--child-filters``, 32 px, batch 32). The paper's
controller: 5 blocks, LSTM 100 units, PPO 4 epochs, batch 20 (``--batch``). The child-evaluation throughput of
the work queue is measured by the ``search_queue*`` scripts.

    python bench/bench_search_controller.py [--batch 20] [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import interleaved_median_times, print_row, record, row

from nasnet_det.models import create_model
from search.controller import Controller
from search.policy import PolicyTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=20, help="architectures per controller update")
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--child-cells", type=int, default=2)
    parser.add_argument("--child-filters", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="the controller runs on the CPU in search runs")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    controller = Controller(num_blocks=args.blocks).to(args.device)
    trainer = PolicyTrainer(controller, "ppo")
    g = torch.Generator().manual_seed(0)

    def controller_round() -> None:
        actions, logp, _ = controller.sample(args.batch, generator=g)
        rewards = torch.rand(args.batch, generator=g)
        trainer.update(actions, logp, rewards)

    child = create_model("nasnet_a_cifar", num_cells=args.child_cells, filters=args.child_filters,
                         drop_path_keep_prob=1.0, image_size=None)
    child.to(args.device).train()
    opt = torch.optim.SGD(child.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(32, 3, 32, 32, device=args.device)
    y = torch.randint(0, 10, (32,), device=args.device)

    def child_step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(child(x), y).backward()
        opt.step()

    t = interleaved_median_times({"controller": controller_round, "child": child_step}, args.repeats, 1,
                                 args.device)
    setting = dict(batch=args.batch, blocks=args.blocks, ppo_epochs=trainer.ppo_epochs, device=args.device,
                   threads=torch.get_num_threads(), repeats=args.repeats,
                   child=f"nasnet_a cifar {args.child_cells}@f{args.child_filters}, 32px, batch 32")
    rows = [row(f"controller sample+PPO update, batch {args.batch}", "seconds", t["controller"], t["child"],
                "one child train step", False, **setting)]
    for r in rows:
        print_row(r)
    print(f"controller round {t['controller'] * 1000:.1f} ms = {t['controller'] / args.batch * 1000:.2f} ms "
          f"per sampled architecture; one child training step {t['child'] * 1000:.1f} ms", flush=True)
    if not args.no_record:
        record("bench_search_controller", rows,
               notes=["ratio = child step time / controller round time: controller rounds per child step"])


if __name__ == "__main__":
    main()
