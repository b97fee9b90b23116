"""LARS against its written formula, parameter groups, optimizer builders, LR schedules and scaling."""
import functools
import math

import pytest
import torch

from ssl_scale.optim import LARS, OPTIMIZERS, SCHEDULES, OptimizerInBackward, param_groups, scale_lr


def lars_reference(params, grads_per_step, lr, m, wd, eta, exclude):
    """Written out per parameter: u = g + wd p; trust = eta |p| / |u| (1 if a norm is 0);
    buf = m buf + trust u; p -= lr buf. Excluded parameters: u = g, no trust."""
    params = [p.clone().double() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    for grads in grads_per_step:
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g.double()
            if exclude[i]:
                d = g
            else:
                u = g + wd * p
                pn, un = p.norm().item(), u.norm().item()
                trust = eta * pn / un if pn > 0 and un > 0 else 1.0
                d = trust * u
            bufs[i] = m * bufs[i] + d
            params[i] = p - lr * bufs[i]
    return params


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(4, 3, generator=g))
    z = torch.nn.Parameter(torch.zeros(2, 2))            # ||p|| = 0: trust 1
    b = torch.nn.Parameter(torch.randn(4, generator=g))  # excluded (bias-like)
    grads = [[torch.randn(4, 3, generator=g), torch.randn(2, 2, generator=g), torch.randn(4, generator=g)]
             for _ in range(2)]
    return [w, z, b], grads


@pytest.mark.parametrize("chunk_numel", [LARS.chunk_numel, 4])  # 4: every parameter in a foreach run of its own
@pytest.mark.parametrize("steps", [1, 2])
def test_lars_matches_formula(steps, chunk_numel):
    (w, z, b), grads = _setup()
    lr, m, wd, eta = 0.5, 0.9, 1e-2, 0.01
    init = [w.detach().clone(), z.detach().clone(), b.detach().clone()]
    opt = OPTIMIZERS.get("lars_sgd")(
        [{"params": [w, z], "weight_decay": wd, "lars_exclude": False},
         {"params": [b], "weight_decay": 0.3, "lars_exclude": True}],  # excluded: its decay is ignored
        lr=lr, momentum=m, weight_decay=123.0, trust_coefficient=eta)  # the groups' own decay wins
    assert isinstance(opt, LARS)
    opt.chunk_numel = chunk_numel
    for k in range(steps):
        for p, g in zip((w, z, b), grads[k]):
            p.grad = g.clone()
        opt.step()
    ref = lars_reference(init, grads[:steps], lr, m, wd, eta, exclude=[False, False, True])
    for p, r in zip((w, z, b), ref):
        torch.testing.assert_close(p.detach().double(), r, rtol=1e-5, atol=1e-6)


def test_lars_skips_params_without_grad():
    (w, z, b), grads = _setup(1)
    opt = LARS([w, b], lr=0.1)
    before = b.detach().clone()
    w.grad = grads[0][0]
    opt.step()
    assert torch.equal(b.detach(), before) and "momentum_buffer" not in opt.state[b]


def test_param_groups_split():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2, bias=False))
    groups = param_groups(model, 1e-6)
    regular = [g for g in groups if not g["lars_exclude"]]
    excluded = [g for g in groups if g["lars_exclude"]]
    assert len(regular) == 1 and len(excluded) == 1
    assert {id(p) for p in regular[0]["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in excluded[0]["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    assert regular[0]["weight_decay"] == 1e-6 and excluded[0]["weight_decay"] == 0.0
    (one,) = param_groups(model, 1e-6, exclude_bias_and_norm=False)
    assert len(one["params"]) == 5 and one["weight_decay"] == 1e-6 and one["lars_exclude"] is False


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW),
                                      ("lars_sgd", LARS)])
def test_builders_respect_group_weight_decay(name, cls):
    model = torch.nn.Linear(3, 2)
    opt = OPTIMIZERS.get(name)(param_groups(model, 0.05), lr=0.1, momentum=0.8, weight_decay=0.7,
                               trust_coefficient=0.002, betas=(0.8, 0.9))
    assert isinstance(opt, cls)
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.05]
    model(torch.randn(5, 3)).sum().backward()
    opt.step()


def test_cosine_schedule_closed_form():
    peak, total, warm, start, final = 4.8, 1000, 100, 0.1, 0.0048
    sched = SCHEDULES.get("cosine")(peak, total, warm, start_lr=start, final_lr=final)
    assert sched(0) == pytest.approx(start)
    assert sched(50) == pytest.approx(start + (peak - start) * 0.5)
    assert sched(warm) == pytest.approx(peak)
    mid = (warm + total) // 2
    assert sched(mid) == pytest.approx(final + 0.5 * (peak - final) * (1 + math.cos(math.pi * 0.5)))
    assert sched(mid) == pytest.approx((peak + final) / 2)
    t = (700 - warm) / (total - warm)
    assert sched(700) == pytest.approx(final + 0.5 * (peak - final) * (1 + math.cos(math.pi * t)))
    assert sched(total) == pytest.approx(final)
    assert sched(total + 500) == pytest.approx(final)  # clamped
    assert sched(5) == sched(5)  # stateless


def test_constant_schedule():
    sched = SCHEDULES.get("constant")(0.3, 1000, 10, start_lr=0.0, final_lr=0.0)
    assert sched(0) == 0.0 and sched(5) == pytest.approx(0.15)
    assert sched(10) == sched(999) == sched(5000) == pytest.approx(0.3)
    no_warmup = SCHEDULES.get("cosine")(1.0, 10, 0)
    assert no_warmup(0) == pytest.approx(1.0) and no_warmup(10) == pytest.approx(0.0)


def test_scale_lr():
    assert scale_lr(0.3, 4096) == pytest.approx(4.8)
    assert scale_lr(0.3, 256) == pytest.approx(0.3)
    assert scale_lr(0.6, 1024, reference_batch=512) == pytest.approx(1.2)


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))


@pytest.mark.parametrize("name", ["lars_sgd", "sgd", "adamw"])
def test_optimizer_in_backward_equals_the_step_after_backward(name):
    """Stepping each parameter in its gradient hook gives the weights of one optimizer stepped after
    backward (LARS's trust ratio is per parameter, so a per-parameter optimizer changes nothing), while
    no moment of backward holds more than one parameter's gradient."""
    ref, fused = _net(), _net()
    build = functools.partial(OPTIMIZERS.get(name), lr=0.1, momentum=0.9, weight_decay=1e-3,
                              trust_coefficient=0.01, betas=(0.9, 0.99))
    opt = build(param_groups(ref, 1e-3))
    held = []  # gradients alive each time one is ready (hooks run in registration order: this one first)
    for p in fused.parameters():
        p.register_post_accumulate_grad_hook(lambda _: held.append(sum(q.grad is not None for q in fused.parameters())))
    fused_opt = OptimizerInBackward(build, param_groups(fused, 1e-3))
    x = torch.randn(3, 8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for k in range(3):
        for net in (ref, fused):
            out = net(x[k])
            (out.square().mean() + out[:, 0].sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        fused_opt.step()
        for a, b in zip(ref.parameters(), fused.parameters()):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    assert max(held) == 1 and len(held) == 3 * len(list(fused.parameters()))
    assert all(p.grad is None for p in fused.parameters())
    assert len(fused_opt.param_groups) == len(list(fused.parameters()))


def test_optimizer_in_backward_skips_and_follows_the_schedule():
    net = _net()
    frozen = net[4].weight
    before = frozen.detach().clone()
    opt = OptimizerInBackward(functools.partial(LARS, lr=0.1), param_groups(net, 0.0), skip=lambda p: p is frozen)
    for g in opt.param_groups:  # what the schedule does every step
        g["lr"] = 0.0 if any(q is net[0].weight for q in g["params"]) else 0.1
    w0 = net[0].weight.detach().clone()
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    assert torch.equal(frozen.detach(), before) and frozen not in opt.state and frozen.grad is None
    assert torch.equal(net[0].weight.detach(), w0)  # lr 0 reached its optimizer
    assert "momentum_buffer" in opt.state[net[4].bias]
