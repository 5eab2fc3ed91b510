"""The library optimizer and EMA give the paper's updates: timm's RMSpropTF is TensorFlow's RMSProp; timm's EMA
warm-up is not slim's, so ModelEma overrides only the decay."""

from __future__ import annotations

import pytest
import torch
from timm.utils import ModelEmaV3

from nasnet_det.classification.config import get_cfg
from nasnet_det.classification.optim import ModelEma, RMSpropTF, build_optimizer


def _tf_rmsprop(w, grads, lr, decay, eps, momentum, weight_decay):
    """tf.train.RMSPropOptimizer (ms starts at 1, eps inside the sqrt, LR inside the momentum), L2 in the loss."""
    ms, mom = torch.ones_like(w), torch.zeros_like(w)
    for g in grads:
        g = g + weight_decay * w
        ms = decay * ms + (1 - decay) * g * g
        mom = momentum * mom + lr * g / torch.sqrt(ms + eps)
        w = w - mom
    return w


@pytest.mark.parametrize("weight_decay", [0.0, 4e-5])
def test_timm_rmsprop_tf_matches_the_tensorflow_update(weight_decay):
    torch.manual_seed(0)
    w0 = torch.tensor([1.0, -2.0, 0.3])
    grads = [torch.randn(3) for _ in range(5)]
    p = torch.nn.Parameter(w0.clone())
    opt = RMSpropTF([p], lr=0.1, alpha=0.9, eps=1.0, momentum=0.9, weight_decay=weight_decay)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = _tf_rmsprop(w0, grads, lr=0.1, decay=0.9, eps=1.0, momentum=0.9, weight_decay=weight_decay)
    torch.testing.assert_close(p.detach(), expected)
    # torch's own RMSprop (eps outside the sqrt, mean square from 0) does not give the paper's update.
    q = torch.nn.Parameter(w0.clone())
    plain = torch.optim.RMSprop([q], lr=0.1, alpha=0.9, eps=1.0, momentum=0.9, weight_decay=weight_decay)
    for g in grads:
        q.grad = g.clone()
        plain.step()
    assert not torch.allclose(q.detach(), expected, atol=1e-3)


def test_config_builds_timm_rmsprop_with_slim_weight_decay_scope():
    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER, cfg.SOLVER.RMSPROP_DECAY, cfg.SOLVER.RMSPROP_EPS = "rmsprop", 0.9, 1.0
    cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.MOMENTUM = 4e-5, 0.9
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, RMSpropTF)
    groups = [(g["weight_decay"], [tuple(p.shape) for p in g["params"]]) for g in opt.param_groups]
    assert groups == [(4e-5, [(4, 3, 3, 3)]), (0.0, [(4,), (4,), (4,)])]  # conv weight / conv bias + BN
    assert all(g["alpha"] == 0.9 and g["eps"] == 1.0 and g["lr_in_momentum"] for g in opt.param_groups)


def _slim_decay(t, decay):
    return min(decay, (1 + t) / (10 + t))


def test_model_ema_follows_slims_warm_up_and_timms_does_not():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = ModelEma(model, 0.99, warmup=True)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for t in range(20):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model, step=t)
        d = _slim_decay(t, 0.99)
        expected = {k: d * expected[k] + (1 - d) * v for k, v in model.state_dict().items()}
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v, expected[k])
    assert ema.get_decay(10**6) == 0.99 and ModelEma(model, 0.99).get_decay(0) == 0.99
    # timm's own warm-up, 1 - (1 + t / gamma) ** -power after a copy of the weights, is another curve for
    # every (gamma, power): its first updates copy the model (decay 0) where slim keeps 1/10 and 2/11.
    for gamma, power in [(1.0, 2 / 3), (1.0, 1.0), (10.0, 1.0), (9.0, 1.0)]:
        timm_ema = ModelEmaV3(model, decay=0.99, use_warmup=True, warmup_gamma=gamma, warmup_power=power)
        assert timm_ema.get_decay(0) == 0.0 != _slim_decay(0, 0.99)
        assert timm_ema.get_decay(50) != pytest.approx(_slim_decay(50, 0.99))


def test_a_checkpoint_of_the_former_hand_written_rmsprop_continues_with_timms():
    # The optimizer state that nasnet_det's own RMSpropTF saved (group key 'decay', no step count) resumes
    # as the uninterrupted TensorFlow update would continue.
    from nasnet_det.classification.optim import upgrade_former_rmsprop_state

    torch.manual_seed(0)
    w0 = torch.randn(4)
    grads = [torch.randn(4) for _ in range(6)]
    hp = dict(lr=0.1, decay=0.9, eps=1.0, momentum=0.9, weight_decay=4e-5)
    w, ms, mom = w0.clone(), torch.ones(4), torch.zeros(4)
    for g in grads[:3]:  # the former optimizer's three steps
        g = g + hp["weight_decay"] * w
        ms = 0.9 * ms + 0.1 * g * g
        mom = 0.9 * mom + 0.1 * g / torch.sqrt(ms + 1.0)
        w = w - mom
    former = {"state": {0: {"square_avg": ms, "momentum_buffer": mom}},
              "param_groups": [{"weight_decay": 4e-5, "lr": 0.1, "decay": 0.9, "eps": 1.0, "momentum": 0.9,
                                "params": [0]}]}
    p = torch.nn.Parameter(w.clone())
    opt = RMSpropTF([{"params": [p], "weight_decay": 4e-5}], lr=0.1, alpha=0.9, eps=1.0, momentum=0.9)
    opt.load_state_dict(former)
    upgrade_former_rmsprop_state(opt, step=3)
    for g in grads[3:]:
        p.grad = g.clone()
        opt.step()
    torch.testing.assert_close(p.detach(), _tf_rmsprop(w0, grads, **hp))
