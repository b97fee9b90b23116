"""LARS against its formula written out here; parameter groups; builders; schedules against
their closed forms; the linear LR scaling rule."""
import copy
import math

import pytest
import torch

from ssl_scale.optim import (LARS, OPTIMIZERS, SCHEDULES, build_optimizer, param_groups, scale_lr)


def lars_reference(p, g, buf, lr, momentum, wd, eta, exclude):
    """One step for one parameter, spelled out in float64."""
    if exclude:
        u = g.clone()
    else:
        u = g + wd * p
        pn, un = p.norm().item(), u.norm().item()
        if pn > 0 and un > 0:
            u = u * (eta * pn / un)
    buf = u if buf is None else momentum * buf + u
    return p - lr * buf, buf


def test_lars_step_equals_formula():
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    w2 = torch.randn(5, generator=g, dtype=torch.float64) * 3
    zero = torch.zeros(2, 2, dtype=torch.float64)  # ||p|| = 0: no trust ratio
    bias = torch.randn(3, generator=g, dtype=torch.float64)
    params = [torch.nn.Parameter(t.clone()) for t in (w1, w2, zero, bias)]
    lr, m, wd, eta = 0.7, 0.9, 0.05, 0.01
    opt = LARS([{"params": params[:3], "weight_decay": wd, "lars_exclude": False},
                {"params": params[3:], "weight_decay": wd, "lars_exclude": True}],  # wd ignored when excluded
               lr=lr, momentum=m, trust_coefficient=eta)
    ref = [t.clone() for t in (w1, w2, zero, bias)]
    bufs = [None] * 4
    for step in range(3):
        grads = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in ref]
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        opt.step()
        for i in range(4):
            ref[i], bufs[i] = lars_reference(ref[i], grads[i], bufs[i], lr, m, wd, eta, exclude=i == 3)
        for p, r in zip(params, ref):
            torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-14)
        for p, gr in zip(params, grads):
            assert torch.equal(p.grad, gr)  # gradients are read, never modified


def test_lars_without_momentum_and_skips_params_without_grad():
    a = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    b = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = LARS([a, b], lr=1.0, momentum=0.0, weight_decay=0.0, trust_coefficient=0.001)
    a.grad = torch.tensor([0.0, 10.0], dtype=torch.float64)
    opt.step()
    # trust = 0.001 * 5 / 10: update = [0, 10] * 0.0005
    torch.testing.assert_close(a.detach(), torch.tensor([3.0, 3.995], dtype=torch.float64))
    assert torch.equal(b.detach(), torch.ones(2, dtype=torch.float64)) and not opt.state[b]


def test_lars_state_dict_round_trip():
    p = torch.nn.Parameter(torch.randn(3, 3))
    opt = LARS([p], lr=0.1)
    p.grad = torch.randn(3, 3)
    opt.step()
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = LARS([q], lr=0.1)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch aliases same-device tensors otherwise
    p.grad = torch.ones(3, 3)
    q.grad = torch.ones(3, 3)
    opt.step()
    opt2.step()
    assert torch.equal(p, q)


def test_param_groups_split_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2), torch.nn.LayerNorm(2), torch.nn.Linear(2, 3, bias=False))
    model[5].weight.requires_grad_(False)
    groups = param_groups(model, weight_decay=1e-6)
    assert [(g["weight_decay"], g["lars_exclude"]) for g in groups] == [(1e-6, False), (0.0, True)]
    assert {id(p) for p in groups[0]["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert len(groups[1]["params"]) == 6  # conv bias, BN weight/bias, linear bias, LN weight/bias
    flat = param_groups(model, 1e-6, exclude_bias_and_norm=False)
    assert len(flat) == 1 and len(flat[0]["params"]) == 8 and not flat[0]["lars_exclude"]


@pytest.mark.parametrize("name,cls", [("lars_sgd", LARS), ("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_builders_accept_the_common_keywords(name, cls):
    model = torch.nn.Linear(3, 2)
    kw = dict(lr=0.5, momentum=0.8, weight_decay=1e-4, trust_coefficient=0.002, betas=(0.8, 0.99))
    opt = OPTIMIZERS.get(name)(param_groups(model, 1e-4), **kw)
    assert type(opt) is cls
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    assert type(build_optimizer(name, model.parameters(), **kw)) is cls
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    if name == "adamw":
        assert opt.param_groups[0]["betas"] == (0.8, 0.99)
    else:
        assert opt.param_groups[0]["momentum"] == 0.8


def test_cosine_schedule_closed_form():
    peak, start, final, warm, total = 4.8, 0.3, 4.8 * 0.001, 10, 110
    s = SCHEDULES.get("cosine")(peak_lr=peak, total_steps=total, warmup_steps=warm, start_lr=start, final_lr=final)
    assert s(0) == pytest.approx(start)
    assert s(5) == pytest.approx(start + (peak - start) * 5 / 10)
    assert s(warm) == pytest.approx(peak)
    assert s(60) == pytest.approx((peak + final) / 2)  # halfway through the cosine
    t = 25 / 100
    assert s(35) == pytest.approx(final + 0.5 * (peak - final) * (1 + math.cos(math.pi * t)))
    assert s(total) == pytest.approx(final)
    assert s(total + 50) == pytest.approx(final)
    assert s.lr_at(35) == s(35) and s(35) == s(35)  # a pure function of the step
    no_warm = SCHEDULES.get("cosine")(peak_lr=1.0, total_steps=4)
    assert [no_warm(i) for i in range(5)] == pytest.approx([1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5,
                                                          0.5 - 0.5 * math.cos(math.pi / 4), 0.0])


def test_constant_schedule():
    s = SCHEDULES.get("constant")(peak_lr=0.1, total_steps=100, warmup_steps=4, start_lr=0.0, final_lr=0.0)
    assert [s(i) for i in (0, 2, 4, 50, 1000)] == pytest.approx([0.0, 0.05, 0.1, 0.1, 0.1])
    assert SCHEDULES.get("constant")(peak_lr=0.2)(0) == 0.2


def test_scale_lr_linear_rule():
    assert scale_lr(0.3, 4096) == pytest.approx(4.8)
    assert scale_lr(0.3, 256) == pytest.approx(0.3)
    assert scale_lr(0.6, 512, reference_batch=512) == pytest.approx(0.6)
