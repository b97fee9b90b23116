"""The SwAV loss against a reference written out here with explicit loops over prototype sets,
assignment crops and predicting crops; the queue (use, FIFO, state_dict); statistics; helpers."""
import math

import pytest
import torch
import torch.nn.functional as F

from ssl_scale.methods import LOSSES, ReduceOps, SwAVLoss, cancel_prototype_gradients, round_queue_length


def ref_sinkhorn(scores, eps, iters):
    """SwAV's recipe on a (B, K) float64 tensor, one prototype row and one sample column at a time."""
    Q = torch.exp(scores / eps).t().clone()  # K x B
    K, B = Q.shape
    Q = Q / Q.sum()
    for _ in range(iters):
        for k in range(K):
            Q[k] = Q[k] / Q[k].sum() / K
        for b in range(B):
            Q[:, b] = Q[:, b] / Q[:, b].sum() / B
    return (Q * B).t()


def ref_loss(scores_list, protos_list, num_crops, assign, T=0.1, eps=0.05, iters=3, queue=None):
    """Mean over prototype sets of the mean over s of the mean over t != s of the batch-mean of
    -sum_k q_s log softmax(scores_t / T)."""
    B = scores_list[0].shape[0] // num_crops
    set_losses = []
    for sc, C in zip(scores_list, protos_list):
        crop_losses = []
        for j, s in enumerate(assign):
            out = sc[s * B:(s + 1) * B].detach()
            if queue is not None:
                out = torch.cat([queue[j] @ C.t(), out])
            q = ref_sinkhorn(out.double(), eps, iters)[-B:]
            terms = []
            for t in range(num_crops):
                if t == s:
                    continue
                log_p = torch.log(torch.softmax(sc[t * B:(t + 1) * B] / T, dim=1))
                ce = sum(-(q[b] * log_p[b]).sum() for b in range(B)) / B
                terms.append(ce)
            crop_losses.append(sum(terms) / len(terms))
        set_losses.append(sum(crop_losses) / len(crop_losses))
    return sum(set_losses) / len(set_losses)


def make_batch(num_crops, B, D, Ks, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(num_crops * B, D, generator=g, dtype=torch.float64), dim=1)
    protos = [F.normalize(torch.randn(k, D, generator=g, dtype=torch.float64), dim=1) for k in Ks]
    return z, protos


@pytest.mark.parametrize("num_crops,assign,Ks", [(2, (0, 1), [5]), (4, (0, 1), [5]), (3, (0, 1), [5, 7]),
                                                 (4, (1,), [6, 4, 9])])
def test_equals_reference_loss_and_gradient(num_crops, assign, Ks):
    z, protos = make_batch(num_crops, 6, 8, Ks)
    scores = [(z @ c.t()).requires_grad_(True) for c in protos]
    loss = SwAVLoss(num_crops=num_crops, crops_for_assign=assign)(z, scores, protos, epoch=0)
    ref_scores = [s.detach().clone().requires_grad_(True) for s in scores]
    ref = ref_loss(ref_scores, protos, num_crops, assign)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    loss.backward()
    ref.backward()
    for a, b in zip(scores, ref_scores):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


def test_registered_with_defaults():
    loss = LOSSES.get("swav")(num_crops=8)
    assert (loss.temperature, loss.epsilon, loss.sinkhorn_iterations) == (0.1, 0.05, 3)
    assert loss.crops_for_assign == (0, 1) and loss.queue_length == 0 and loss.queue_start_epoch == 15
    assert loss.queue is None and "queue" not in loss.state_dict()


def test_temperature_epsilon_iterations_are_used():
    z, protos = make_batch(3, 5, 8, [6], seed=1)
    scores = [z @ protos[0].t()]
    loss = SwAVLoss(num_crops=3, temperature=0.2, epsilon=0.03, sinkhorn_iterations=7)(z, scores, protos)
    torch.testing.assert_close(loss, ref_loss(scores, protos, 3, (0, 1), T=0.2, eps=0.03, iters=7))


def _full_queue_loss(L=8, B=4, D=8, Ks=(5, 7), start=2):
    loss_fn = SwAVLoss(num_crops=3, queue_length=L, queue_start_epoch=start)
    loss_fn.init_queue(D, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    known = F.normalize(torch.randn(2, L, D, generator=g, dtype=torch.float64), dim=2)
    loss_fn.load_state_dict({"queue": known, "queue_filled": torch.tensor(L)})
    z, protos = make_batch(3, B, D, Ks, seed=6)
    return loss_fn, known, z, protos, [z @ c.t() for c in protos]


def test_queue_in_use_equals_reference_with_queue():
    loss_fn, known, z, protos, scores = _full_queue_loss()
    loss = loss_fn(z, scores, protos, epoch=2)
    torch.testing.assert_close(loss, ref_loss(scores, protos, 3, (0, 1), queue=known), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(loss, ref_loss(scores, protos, 3, (0, 1)))  # the queue did change the codes


def test_queue_not_used_before_start_epoch_or_while_filling():
    loss_fn, _, z, protos, scores = _full_queue_loss()
    no_queue = ref_loss(scores, protos, 3, (0, 1))
    torch.testing.assert_close(loss_fn(z, scores, protos, epoch=1), no_queue)  # too early
    fresh = SwAVLoss(num_crops=3, queue_length=8, queue_start_epoch=0)
    fresh.init_queue(8, dtype=torch.float64)
    torch.testing.assert_close(fresh(z, scores, protos, epoch=5), no_queue)  # empty, then 4 of 8 rows
    torch.testing.assert_close(fresh(z, scores, protos, epoch=5), no_queue)  # half full, then full
    assert fresh.queue_in_use(5)
    queued = torch.stack([z[0:4], z[4:8]]).repeat(1, 2, 1)  # two pushes of the same batch
    torch.testing.assert_close(fresh(z, scores, protos, epoch=5), ref_loss(scores, protos, 3, (0, 1), queue=queued))


def test_queue_fifo_newest_first():
    B, L, D = 4, 12, 8
    loss_fn = SwAVLoss(num_crops=3, crops_for_assign=(2, 0), queue_length=L)  # lazily allocated
    batches = [make_batch(3, B, D, [5], seed=s) for s in range(4)]
    for i, (z, protos) in enumerate(batches):
        loss_fn(z, [z @ protos[0].t()], protos, epoch=0)
        assert loss_fn._filled == min((i + 1) * B, L) and int(loss_fn.queue_filled) == loss_fn._filled
    assert loss_fn.queue.shape == (2, L, D) and loss_fn.queue.dtype == torch.float64
    for j, s in enumerate((2, 0)):  # newest batch first, oldest (batch 0) pushed out
        expected = torch.cat([batches[k][0][s * B:(s + 1) * B] for k in (3, 2, 1)])
        torch.testing.assert_close(loss_fn.queue[j], expected)


def test_queue_state_dict_round_trip():
    loss_fn, known, z, protos, scores = _full_queue_loss()
    loss_fn(z, scores, protos, epoch=2)  # pushes a batch
    sd = loss_fn.state_dict()
    assert set(sd) == {"queue", "queue_filled"}
    restored = SwAVLoss(num_crops=3, queue_length=8, queue_start_epoch=2)  # allocated lazily by the load
    restored.load_state_dict({k: v.clone() for k, v in sd.items()})
    assert torch.equal(restored.queue, loss_fn.queue) and restored._filled == 8
    torch.testing.assert_close(restored(z, scores, protos, epoch=2), loss_fn(z, scores, protos, epoch=2))
    pre = SwAVLoss(num_crops=3, queue_length=8)
    pre.init_queue(8, dtype=torch.float64)  # explicitly allocated, as the trainer does
    pre.load_state_dict(sd)
    assert torch.equal(pre.queue, sd["queue"]) and pre._filled == 8
    with pytest.raises(RuntimeError):  # a queue of another length is an error, not a silent reshape
        wrong = SwAVLoss(num_crops=3, queue_length=4)
        wrong.init_queue(8, dtype=torch.float64)
        wrong.load_state_dict(sd)


def test_statistics():
    B, K = 4, 6
    # Crop 0 chooses prototypes 0 and 1, crop 1 chooses 2; crops 2.. are not assignment crops.
    winners = [[0, 0, 1, 1], [2, 2, 2, 2], [5, 5, 5, 5]]
    scores = torch.full((3 * B, K), -1.0, dtype=torch.float64)
    for c, w in enumerate(winners):
        scores[torch.arange(c * B, (c + 1) * B), torch.tensor(w)] = 1.0
    z = torch.zeros(3 * B, 4, dtype=torch.float64)
    loss_fn = SwAVLoss(num_crops=3, epsilon=0.5)
    loss_fn(z, [scores], [torch.zeros(K, 4, dtype=torch.float64)])
    st = loss_fn.last_stats
    assert float(st["prototype_usage"]) == pytest.approx(3 / 6)
    assert st["ln_k"] == pytest.approx(math.log(K))
    codes = [ref_sinkhorn(scores[s * B:(s + 1) * B], 0.5, 3) for s in (0, 1)]
    entropy = sum(-(q * q.log()).sum(1).mean() for q in codes) / 2
    assert float(st["assignment_entropy"]) == pytest.approx(float(entropy), rel=1e-9)
    assert 0 < float(st["assignment_entropy"]) < math.log(K)


def test_reduce_callables_are_called_and_accepted_one_by_one():
    calls = []

    def rsum(t):
        calls.append("sum")

    def rmax(t):
        calls.append("max")

    z, protos = make_batch(2, 4, 8, [5])
    scores = [z @ protos[0].t()]
    a = SwAVLoss(num_crops=2, reduce_sum=rsum, reduce_max=rmax)(z, scores, protos)
    b = SwAVLoss(num_crops=2, reduce_ops=ReduceOps(rsum, rmax))(z, scores, protos)
    torch.testing.assert_close(a, b)
    # per assignment crop: 1 max + 1 (total, batch) + 3 row sums; plus 1 max for prototype usage
    assert calls.count("sum") == 2 * 2 * 4 and calls.count("max") == 2 * (2 + 1)
    with pytest.raises(ValueError):
        SwAVLoss(num_crops=2, reduce_ops=ReduceOps(), reduce_sum=rsum, reduce_max=rmax)
    with pytest.raises(ValueError):
        SwAVLoss(num_crops=2, reduce_sum=rsum)


def test_bad_arguments():
    with pytest.raises(ValueError):
        SwAVLoss(num_crops=1)
    with pytest.raises(ValueError):
        SwAVLoss(num_crops=2, crops_for_assign=(0, 2))
    z, protos = make_batch(2, 4, 8, [5])
    with pytest.raises(ValueError):
        SwAVLoss(num_crops=3)(z[:7], [z[:7] @ protos[0].t()], protos)


def test_cancel_prototype_gradients():
    p = torch.nn.Parameter(torch.ones(3, 2))
    p.grad = torch.ones(3, 2)
    cancel_prototype_gradients([p], iteration=5, freeze_iters=6)
    assert p.grad is None
    p.grad = torch.ones(3, 2)
    cancel_prototype_gradients([p], iteration=6, freeze_iters=6)
    assert p.grad is not None


def test_round_queue_length():
    assert round_queue_length(3840, 256) == 3840
    assert round_queue_length(3840, 1000) == 3000
    assert round_queue_length(100, 256) == 0
    assert round_queue_length(0, 256) == 0
    with pytest.raises(ValueError):
        round_queue_length(3840, 0)
