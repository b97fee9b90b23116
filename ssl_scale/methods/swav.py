"""The SwAV swapped-prediction loss with its embedding queue and statistics, and prototype freezing."""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssl_scale.registry import Registry

from .sinkhorn import Reduce, sinkhorn_knopp

LOSSES = Registry("loss")


@LOSSES.register("swav", "SwAV swapped prediction with Sinkhorn-Knopp codes (optional queue)")
class SwAVLoss(nn.Module):
    """SwAV swapped-prediction loss over multi-crop embeddings.

    For every prototype set i and assignment crop s, the codes q_s come from Sinkhorn-Knopp on the
    scores of crop s (with the queue's scores ``queue_s @ C_i^T``, recomputed with the current
    prototypes and no gradient, prepended when the queue is in use; only the batch rows are kept).
    Every other crop t predicts them: ``-sum(q_s * log_softmax(scores_t / T))``, averaged over the
    batch, over t != s, over s, then over prototype sets. Rows are crop-major: crop c is rows
    ``[c*B, (c+1)*B)``.

    Queue: ``queue_length`` past embeddings per assignment crop, on this process (0 = none). After
    each forward the batch's detached embeddings of each assignment crop are pushed first-in
    first-out (the queue shifts back by B rows and the batch is written at the front), from the very
    first step. The buffer ``queue_filled`` counts the valid rows (capped at ``queue_length``); the
    queue is used for codes only when ``epoch >= queue_start_epoch`` AND it is full, so that no
    zero rows ever enter Sinkhorn. A host copy of the counter decides this without a device sync.
    ``queue`` and ``queue_filled`` are registered buffers (in ``state_dict()``); they are allocated
    by ``init_queue(dim, device)``, or lazily by the first forward or by ``load_state_dict``.

    ``last_stats`` (detached tensors, refreshed every forward, no host sync):
    ``assignment_entropy``: mean entropy (nats) of the codes of the first assignment crop, set 0;
    ``prototype_usage``: fraction of the prototypes of set 0 that are the argmax of the scores of at
    least one assignment-crop sample of the GLOBAL batch (a 0/1 vector max-all-reduced);
    ``ln_k``: ln(K) of set 0, the loss of a collapsed model.

    Args:
        temperature: softmax temperature T of the predictions.
        epsilon: Sinkhorn entropic regularisation.
        sinkhorn_iterations: Sinkhorn iterations.
        crops_for_assign: crop indices whose codes are predicted (SwAV: the two large crops).
        num_crops: crops per image.
        queue_length: queue rows per assignment crop on this process (0 = no queue).
        queue_start_epoch: first epoch in which the (full) queue is used.
        use_float64: run Sinkhorn in float64.
        reduce_sum: in-place sum all-reduce over the data-parallel ranks; None = one process.
        reduce_max: in-place max all-reduce over the data-parallel ranks; None = one process.
        prototype_shards: N > 1 when each of N ranks holds K/N rows of every prototype set (sharded
            head): ``scores`` are then the (N * num_crops * B, K/N) scores of the embeddings of all
            ranks (rank-major) against the local rows. The softmax becomes a log-sum-exp over the
            shards, Sinkhorn normalises samples across shards, and the returned loss has the value
            of the global loss and the gradient of N times this rank's share of it (every rank holds
            the whole loss; data parallelism averages gradients over the N ranks). No queue.
        reduce_sum_grad: out-of-place sum over ranks whose backward sums the gradients (needed with
            prototype_shards > 1).
    """

    def __init__(self, temperature: float = 0.1, epsilon: float = 0.05, sinkhorn_iterations: int = 3,
                 crops_for_assign: Sequence[int] = (0, 1), num_crops: int = 2, queue_length: int = 0,
                 queue_start_epoch: int = 15, use_float64: bool = False, reduce_sum: Optional[Reduce] = None,
                 reduce_max: Optional[Reduce] = None, prototype_shards: int = 1,
                 reduce_sum_grad: Optional[Callable[[Tensor], Tensor]] = None):
        super().__init__()
        if prototype_shards > 1 and (queue_length or reduce_sum is None or reduce_max is None or reduce_sum_grad is None):
            raise ValueError("sharded prototypes need reduce_sum, reduce_max and reduce_sum_grad, and no queue")
        if num_crops < 2:
            raise ValueError(f"SwAV needs at least 2 crops per image, got num_crops={num_crops}")
        crops_for_assign = tuple(int(c) for c in crops_for_assign)
        if not crops_for_assign or any(not 0 <= c < num_crops for c in crops_for_assign):
            raise ValueError(f"crops_for_assign {list(crops_for_assign)} must be indices below num_crops={num_crops}")
        if queue_length < 0:
            raise ValueError(f"queue_length must be >= 0, got {queue_length}")
        if temperature <= 0 or epsilon <= 0:
            raise ValueError(f"temperature and epsilon must be positive, got {temperature} and {epsilon}")
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.crops_for_assign = crops_for_assign
        self.num_crops = num_crops
        self.queue_length = queue_length
        self.queue_start_epoch = queue_start_epoch
        self.use_float64 = use_float64
        self.reduce_sum = reduce_sum
        self.reduce_max = reduce_max
        self.prototype_shards = prototype_shards
        self.reduce_sum_grad = reduce_sum_grad
        self.register_buffer("queue", None)
        self.register_buffer("queue_filled", None)
        self._filled = 0  # host copy of queue_filled
        self.last_stats: Dict[str, Tensor] = {}

    # ----- queue -------------------------------------------------------------------------------
    def init_queue(self, dim: int, device: Union[torch.device, str, None] = None,
                   dtype: torch.dtype = torch.float32) -> None:
        """Allocates an empty queue buffer (len(crops_for_assign), queue_length, dim) and its fill
        counter; does nothing when queue_length is 0."""
        if self.queue_length == 0:
            return
        self.queue = torch.zeros(len(self.crops_for_assign), self.queue_length, dim, device=device, dtype=dtype)
        self.queue_filled = torch.zeros((), dtype=torch.long, device=device)
        self._filled = 0

    def queue_in_use(self, epoch: int) -> bool:
        """Whether the codes of this epoch's steps use the queue (it must also be full)."""
        return self.queue is not None and epoch >= self.queue_start_epoch and self._filled >= self.queue_length

    @torch.no_grad()
    def _push(self, embeddings: Tensor, batch: int) -> None:
        """Shifts the queue back by one batch and writes this batch's assignment-crop embeddings first."""
        queue, n = self.queue, self.queue_length
        new = min(batch, n)
        if n > new:
            queue[:, new:] = queue[:, : n - new].clone()
        for j, s in enumerate(self.crops_for_assign):
            queue[j, :new] = embeddings[s * batch: s * batch + new].to(queue.dtype)
        self._filled = min(self._filled + batch, n)
        self.queue_filled.fill_(self._filled)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        stored = state_dict.get(prefix + "queue")
        if stored is not None and self.queue_length and self.queue is None:  # lazy: take the stored shape
            self.init_queue(stored.shape[-1], stored.device, stored.dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if self.queue_filled is not None:
            self._filled = int(self.queue_filled)  # one host sync, at load time only

    # ----- loss --------------------------------------------------------------------------------
    def forward(self, embeddings: Tensor, scores: Union[Tensor, List[Tensor]],
                prototypes: Union[Tensor, List[Tensor]], epoch: int = 0) -> Tensor:
        """
        Args:
            embeddings: (num_crops * B, D) normalised embeddings, crop-major rows.
            scores: one (num_crops * B, K_i) tensor ``embeddings @ C_i^T`` per prototype set (a lone
                tensor means one set).
            prototypes: the (K_i, D) prototype matrices C_i (used to score the queue).
            epoch: current epoch (decides whether the queue is used).

        Returns:
            the scalar loss of this rank's batch (its mean over equal-sized ranks is the global loss).
        """
        if isinstance(scores, Tensor):
            scores = [scores]
        if isinstance(prototypes, Tensor):
            prototypes = [prototypes]
        if len(scores) != len(prototypes) or not scores:
            raise ValueError(f"{len(scores)} score tensors for {len(prototypes)} prototype sets")
        rows = embeddings.shape[0]
        n = self.num_crops
        if rows % n:
            raise ValueError(f"{rows} embedding rows are not a multiple of num_crops={n}")
        if self.prototype_shards > 1:
            return self._forward_sharded(scores, n)
        b = rows // n
        if self.queue_length and self.queue is None:
            dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
            self.init_queue(embeddings.shape[1], embeddings.device, dtype)
        use_queue = self.queue_in_use(epoch)

        total: Union[float, Tensor] = 0.0
        first_codes: Optional[Tensor] = None
        for i, (sc, protos) in enumerate(zip(scores, prototypes)):
            if sc.shape[0] != rows:
                raise ValueError(f"scores of set {i} have {sc.shape[0]} rows, embeddings {rows}")
            if sc.dtype in (torch.float16, torch.bfloat16):
                sc = sc.float()
            log_p = F.log_softmax(sc / self.temperature, dim=1).view(n, b, -1)
            set_loss: Union[float, Tensor] = 0.0
            for j, s in enumerate(self.crops_for_assign):
                with torch.no_grad():
                    out = sc[s * b:(s + 1) * b].detach()
                    if use_queue:  # the queue scored with the current prototypes, then this batch
                        queued = self.queue[j] @ protos.detach().to(self.queue.dtype).t()
                        out = torch.cat([queued.to(out.dtype), out])
                    q = sinkhorn_knopp(out, self.epsilon, self.sinkhorn_iterations, self.reduce_sum,
                                       self.reduce_max, self.use_float64)[-b:]
                if i == 0 and j == 0:
                    first_codes = q
                # per_crop[t] = mean over the batch of the cross-entropy of crop t against q
                per_crop = -torch.einsum("bk,nbk->n", q.to(log_p.dtype), log_p) / b
                set_loss = set_loss + (per_crop.sum() - per_crop[s]) / (n - 1)
            total = total + set_loss / len(self.crops_for_assign)
        loss = total / len(scores)

        self._update_stats(scores[0], first_codes, b)
        if self.queue is not None:
            self._push(embeddings.detach(), b)
        return loss

    def _forward_sharded(self, scores: List[Tensor], n: int) -> Tensor:
        w = self.prototype_shards
        total: Union[float, Tensor] = 0.0
        for i, sc in enumerate(scores):
            rows, k_local = sc.shape
            b = rows // (w * n)  # samples per rank
            # rank-major (rank, crop, sample) rows -> crop-major rows over the global batch
            sc = sc.float().view(w, n, b, k_local).transpose(0, 1).reshape(n, w * b, k_local)
            logits = sc / self.temperature
            top = logits.detach().amax(dim=2)
            self.reduce_max(top)
            lse = top + torch.log(self.reduce_sum_grad(torch.exp(logits - top.unsqueeze(2)).sum(dim=2)))
            log_p = logits - lse.unsqueeze(2)  # log-softmax over all K prototypes, this rank's columns
            set_loss: Union[float, Tensor] = 0.0
            for j, s in enumerate(self.crops_for_assign):
                q = sinkhorn_knopp(sc[s].detach(), self.epsilon, self.sinkhorn_iterations, self.reduce_sum,
                                   self.reduce_max, self.use_float64, prototypes_split=True)
                if i == 0 and j == 0:
                    self._update_sharded_stats(sc, q)
                # this rank's share of the cross-entropy: the sum over its prototype columns
                per_crop = -torch.einsum("bk,nbk->n", q.to(log_p.dtype), log_p) / (w * b)
                set_loss = set_loss + (per_crop.sum() - per_crop[s]) / (n - 1)
            total = total + set_loss / len(self.crops_for_assign)
        share = w * total / len(scores)
        value = self.reduce_sum(share.detach() / w)
        return share + (value - share).detach()

    @torch.no_grad()
    def _update_sharded_stats(self, scores: Tensor, codes: Tensor) -> None:
        """The statistics of `_update_stats` from (crop, global sample, K/N) scores and (global sample, K/N) codes."""
        entropy = -torch.special.xlogy(codes, codes).sum(dim=1)
        self.reduce_sum(entropy)
        used = torch.zeros(scores.shape[2], dtype=torch.bool, device=scores.device)
        k = torch.tensor([float(scores.shape[2])], device=scores.device)
        self.reduce_sum(k)
        for s in self.crops_for_assign:
            best = scores[s].amax(dim=1)
            self.reduce_max(best)
            used |= (scores[s] == best.unsqueeze(1)).any(dim=0)
        count = used.float().sum().reshape(1)
        self.reduce_sum(count)
        self.last_stats = {"assignment_entropy": entropy.mean(), "prototype_usage": (count / k)[0],
                           "ln_k": torch.log(k)[0].cpu()}

    @torch.no_grad()
    def _update_stats(self, scores: Tensor, codes: Tensor, b: int) -> None:
        """Tensors only (no host sync): the trainer reads them at logging steps."""
        entropy = -torch.special.xlogy(codes, codes).sum(dim=1).mean()
        used = torch.zeros(scores.shape[1], dtype=torch.float32, device=scores.device)
        for s in self.crops_for_assign:
            used[scores[s * b:(s + 1) * b].argmax(dim=1)] = 1.0
        if self.reduce_max is not None:
            self.reduce_max(used)
        self.last_stats = {"assignment_entropy": entropy.detach(), "prototype_usage": used.mean(),
                           "ln_k": torch.tensor(math.log(scores.shape[1]))}

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, epsilon={self.epsilon}, "
                f"sinkhorn_iterations={self.sinkhorn_iterations}, crops_for_assign={list(self.crops_for_assign)}, "
                f"num_crops={self.num_crops}, queue_length={self.queue_length}, "
                f"queue_start_epoch={self.queue_start_epoch}")


def cancel_prototype_gradients(prototype_params: Iterable[Tensor], iteration: int, freeze_iters: int) -> None:
    """Drops the prototypes' gradients (``grad = None``, so the optimizer skips them, momentum and
    weight decay included) while ``iteration < freeze_iters``; call between backward and step."""
    if iteration >= freeze_iters:
        return
    for p in prototype_params:
        p.grad = None
