"""SwAV loss against explicit loops over crops and prototype sets, with and without the queue; queue state."""
import math

import pytest
import torch
import torch.nn.functional as F

from ssl_scale.methods import LOSSES, SwAVLoss, cancel_prototype_gradients

T, EPS, ITERS = 0.1, 0.05, 3


def ref_sinkhorn(scores, eps, iters):
    """Tensor reference, float64, written as in the SwAV paper's pseudo-code."""
    q = torch.exp((scores.double() - scores.double().max()) / eps).t()
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def ref_loss(emb, scores, protos, n, cfa, queue=None):
    """Explicit loops: sets -> assignment crops s -> predicting crops t != s."""
    b = emb.shape[0] // n
    per_set = []
    first_codes = None
    for i, (sc, c) in enumerate(zip(scores, protos)):
        per_s = []
        for j, s in enumerate(cfa):
            with torch.no_grad():
                out = sc[s * b:(s + 1) * b].detach().double()
                if queue is not None:
                    out = torch.cat([queue[j].double() @ c.detach().double().t(), out])
                q = ref_sinkhorn(out, EPS, ITERS)[-b:].float()
            if first_codes is None:
                first_codes = q
            per_t = []
            for t in range(n):
                if t == s:
                    continue
                log_p = F.log_softmax(sc[t * b:(t + 1) * b] / T, dim=1)
                per_t.append(-(q * log_p).sum(dim=1).mean())
            per_s.append(sum(per_t) / len(per_t))
        per_set.append(sum(per_s) / len(per_s))
    return sum(per_set) / len(per_set), first_codes


def make_inputs(n=3, b=4, d=6, ks=(5,), seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(n * b, d, generator=g), dim=1).requires_grad_()
    protos = [F.normalize(torch.randn(k, d, generator=g), dim=1).requires_grad_() for k in ks]
    return emb, protos


def scores_of(emb, protos):
    return [emb @ c.t() for c in protos]


def check(loss_fn, emb, protos, n, cfa, epoch, queue=None):
    loss = loss_fn(emb, scores_of(emb, protos), protos, epoch=epoch)
    grads = torch.autograd.grad(loss, [emb, *protos])
    ref, codes = ref_loss(emb, scores_of(emb, protos), protos, n, cfa, queue)
    ref_grads = torch.autograd.grad(ref, [emb, *protos])
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    return codes


def test_registered():
    assert LOSSES.get("swav") is SwAVLoss


@pytest.mark.parametrize("ks", [(5,), (5, 7, 3)])
@pytest.mark.parametrize("n,cfa", [(2, (0, 1)), (4, (0, 1)), (3, (1,))])
def test_matches_loops_without_queue(ks, n, cfa):
    emb, protos = make_inputs(n=n, ks=ks)
    loss_fn = SwAVLoss(temperature=T, epsilon=EPS, sinkhorn_iterations=ITERS, crops_for_assign=cfa, num_crops=n)
    codes = check(loss_fn, emb, protos, n, cfa, epoch=0)
    stats = loss_fn.last_stats
    ent = -(codes * codes.clamp_min(1e-30).log()).sum(1).mean()
    torch.testing.assert_close(stats["assignment_entropy"], ent, rtol=1e-4, atol=1e-6)
    b = emb.shape[0] // n
    s0 = scores_of(emb, protos)[0].detach()
    used = {int(s0[s * b + r].argmax()) for s in cfa for r in range(b)}
    assert float(stats["prototype_usage"]) == pytest.approx(len(used) / ks[0])
    assert float(stats["ln_k"]) == pytest.approx(math.log(ks[0]))
    assert all(not v.requires_grad for v in stats.values())


@pytest.mark.parametrize("ks", [(5,), (5, 7)])
def test_matches_loops_with_prefilled_queue(ks):
    n, b, d, qlen, cfa = 3, 4, 6, 8, (0, 1)
    emb, protos = make_inputs(n=n, b=b, d=d, ks=ks, seed=1)
    g = torch.Generator().manual_seed(7)
    known = F.normalize(torch.randn(len(cfa), qlen, d, generator=g), dim=2)
    loss_fn = SwAVLoss(temperature=T, epsilon=EPS, sinkhorn_iterations=ITERS, crops_for_assign=cfa, num_crops=n,
                       queue_length=qlen, queue_start_epoch=2)
    loss_fn.load_state_dict({"queue": known.clone(), "queue_filled": torch.tensor(qlen)})
    assert loss_fn.queue_in_use(2) and not loss_fn.queue_in_use(1)
    check(loss_fn, emb, protos, n, cfa, epoch=2, queue=known)
    # before queue_start_epoch the full queue is not used
    loss_fn.load_state_dict({"queue": known.clone(), "queue_filled": torch.tensor(qlen)})
    check(loss_fn, emb, protos, n, cfa, epoch=1, queue=None)


def test_queue_unused_until_full_and_fifo_content():
    n, b, d, qlen, cfa = 3, 4, 6, 6, (0, 2)
    loss_fn = SwAVLoss(crops_for_assign=cfa, num_crops=n, queue_length=qlen, queue_start_epoch=0)
    loss_fn.init_queue(d, "cpu")
    assert loss_fn.queue.shape == (2, qlen, d) and int(loss_fn.queue_filled) == 0
    e1, protos = make_inputs(n=n, b=b, d=d, seed=2)
    check(loss_fn, e1, protos, n, cfa, epoch=5, queue=None)  # empty queue: not used
    q = loss_fn.queue
    for j, s in enumerate(cfa):
        torch.testing.assert_close(q[j, :b], e1.detach()[s * b:(s + 1) * b])
        assert (q[j, b:] == 0).all()
    assert int(loss_fn.queue_filled) == b and not loss_fn.queue_in_use(5)
    e2, _ = make_inputs(n=n, b=b, d=d, seed=3)
    check(loss_fn, e2, protos, n, cfa, epoch=5, queue=None)  # 4 of 6 rows filled: still not used
    for j, s in enumerate(cfa):
        torch.testing.assert_close(q[j, :b], e2.detach()[s * b:(s + 1) * b])     # newest first
        torch.testing.assert_close(q[j, b:], e1.detach()[s * b:s * b + qlen - b])  # then the oldest kept
    assert int(loss_fn.queue_filled) == qlen and loss_fn.queue_in_use(5)
    before = loss_fn.queue.clone()
    e3, _ = make_inputs(n=n, b=b, d=d, seed=4)
    check(loss_fn, e3, protos, n, cfa, epoch=5, queue=before)  # full now: used with the pre-step content
    assert not loss_fn.queue.requires_grad


def test_state_dict_round_trip():
    n, b, d, qlen = 2, 4, 6, 8
    kw = dict(num_crops=n, queue_length=qlen, queue_start_epoch=0)
    a = SwAVLoss(**kw)
    a.init_queue(d, "cpu")
    for seed in (5, 6):
        emb, protos = make_inputs(n=n, b=b, d=d, seed=seed)
        a(emb, scores_of(emb, protos), protos, epoch=0)
    sd = a.state_dict()
    assert set(sd) == {"queue", "queue_filled"} and int(sd["queue_filled"]) == qlen
    fresh = SwAVLoss(**kw)  # no init_queue: load_state_dict allocates it from the stored shape
    fresh.load_state_dict(sd)
    torch.testing.assert_close(fresh.queue, a.queue)
    assert fresh.queue_in_use(0)
    emb, protos = make_inputs(n=n, b=b, d=d, seed=9)
    torch.testing.assert_close(fresh(emb, scores_of(emb, protos), protos, epoch=0),
                               a(emb, scores_of(emb, protos), protos, epoch=0))
    torch.testing.assert_close(fresh.queue, a.queue)
    assert SwAVLoss(num_crops=2).state_dict() == {}


def test_cancel_prototype_gradients():
    p = torch.nn.Parameter(torch.ones(3, 2))
    p.grad = torch.ones(3, 2)
    cancel_prototype_gradients([p], iteration=5, freeze_iters=5)
    assert p.grad is not None
    cancel_prototype_gradients([p], iteration=4, freeze_iters=5)
    assert p.grad is None


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        SwAVLoss(num_crops=2, crops_for_assign=(0, 2))
    with pytest.raises(ValueError):
        SwAVLoss(num_crops=1, crops_for_assign=(0,))
