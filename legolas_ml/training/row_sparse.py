"""The word-embedding table in CPU training, touched row by row: the same step, without whole-table passes.

A batch of 16 texts of ~51 tokens touches at most 816 of MiniLM's 30,522 vocabulary rows, and a
fold of the demo's texts only ~300 rows in all, yet stock training treats the table (30522 x 384
fp32, 47 MB, half of MiniLM's parameters) as dense every step: the embedding backward allocates
and fills a zero gradient of the whole table, clipping reads and rescales all of it, and fused
AdamW reads the parameter, gradient and both moments of every row and writes three of them back.
On a 2-core AVX2 CPU the profiler put the fill, the norm and the rescale at ~15 ms of a ~415 ms
step at ~51 tokens (bench/train_levers.py, lever ``rowgrad``), and fused AdamW spends ~8 ms a step
on the table, which ``RowSparseAdamW`` brings to ~1 ms (lever ``rowadam``).

- ``row_sparse_embedding_grad`` keeps one dense gradient buffer for the table. Its backward
  zeroes only the rows the previous step wrote, adds this batch's rows (as the stock backward
  does: the same bits) and hands the buffer to ``weight.grad``.
- Its ``clip_grad_norm_`` computes the total norm and scale of ``torch.nn.utils.clip_grad_norm_``
  while reading and scaling only the touched rows (the others are exactly zero), and skips the
  scaling when the coefficient is 1. Unclipped steps are the same bits; when the norm does
  exceed ``max_norm``, summing fewer zeros can move the norm by an ulp, so clipped steps agree
  to float rounding.
- ``RowSparseAdamW`` is fused AdamW that keeps Adam's moments only for the rows that ever had a
  gradient. A row that never had one has zero moments, so AdamW's step for it is the decoupled
  weight decay alone: one multiplication of the table. The result is AdamW's, bit for bit
  (tests/test_speed_paths.py), and the moments of the other ~30,000 rows (94 MB) are never
  allocated.

The trainer uses them on CPU only: on CUDA these passes cost microseconds, and ``index_add_``
there adds duplicate rows with atomics, in no fixed order, where the stock backward is
deterministic.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F


class _EmbeddingRows(torch.autograd.Function):
    """``F.embedding`` whose weight gradient goes to the owner's buffer instead of through autograd."""

    @staticmethod
    def forward(ctx, ids: torch.Tensor, weight: torch.Tensor, owner: RowSparseEmbeddingGrad) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.owner = owner
        return F.embedding(ids, weight, owner.padding_idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        ctx.owner.accumulate(ids, grad)
        return None, None, None  # the weight's gradient is already in weight.grad


class RowSparseEmbeddingGrad:
    """The gradient of one ``nn.Embedding``'s weight, kept in a buffer that is zero outside the rows it lists.

    Args:
        embedding: a dense ``nn.Embedding`` (no ``max_norm``, ``scale_grad_by_freq`` or ``sparse``).

    The invariant: while ``weight.grad`` is this buffer, every row not in ``touched`` is zero.
    Nothing in a training step breaks it (AdamW reads gradients, clipping scales them); code that
    writes other rows of ``weight.grad`` by hand must not run inside the block. Inside it, the
    gradient bypasses autograd's accumulation: hooks registered on the weight do not see it,
    ``torch.autograd.grad(loss, weight)`` returns None (and fills ``weight.grad``), and a
    reference to ``weight.grad`` kept across steps is overwritten by the next backward. The speed
    comes with ``zero_grad(set_to_none=True)``, as the trainer calls it; with ``set_to_none=False``
    the results are the same but every step zeroes the whole buffer.
    """

    def __init__(self, embedding: torch.nn.Embedding) -> None:
        if not supports_row_sparse_grad(embedding):
            raise ValueError(
                "embedding must be a dense nn.Embedding without max_norm or scale_grad_by_freq, "
                f"got {embedding!r}"
            )
        self.embedding = embedding
        self.weight = embedding.weight
        self.padding_idx = embedding.padding_idx
        self._buffer: torch.Tensor | None = None
        self.touched: torch.Tensor | None = None  # sorted row indices that may be non-zero in the buffer

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return _EmbeddingRows.apply(ids, self.weight, self)
        return F.embedding(ids, self.weight, self.padding_idx)

    def accumulate(self, ids: torch.Tensor, grad: torch.Tensor) -> None:
        """Add one backward's rows to ``weight.grad``, as the stock embedding backward would."""
        rows = ids.reshape(-1).long()
        values = grad.reshape(-1, grad.shape[-1]).to(self.weight.dtype)
        if self.padding_idx is not None:  # the padding row never receives a gradient
            keep = rows != self.padding_idx
            rows, values = rows[keep], values[keep]
        # This backward's gradient, compacted to its distinct rows: each row sums its positions in
        # order from zero, as the stock backward does, so the values are the same bits.
        unique, inverse = torch.unique(rows, return_inverse=True)
        compact = values.new_zeros(len(unique), values.shape[1]).index_add_(0, inverse, values)
        current = self.weight.grad
        if current is None:  # a new step: the buffer still holds the last one's rows
            if self._buffer is None:
                self._buffer = torch.zeros_like(self.weight)
            elif self.touched is not None:
                self._buffer.index_fill_(0, self.touched, 0)
            self._buffer.index_copy_(0, unique, compact)
            self.touched = unique
            self.weight.grad = self._buffer
        elif current is self._buffer:  # accumulation over several backwards: existing + new, as autograd adds
            self._buffer.index_add_(0, unique, compact)
            self.touched = torch.unique(torch.cat([self.touched, unique]))
        else:  # a gradient that someone else put there: plain accumulation, clipping reads all of it
            current.index_add_(0, unique, compact)

    def active(self) -> bool:
        """True when ``weight.grad`` is the buffer and ``touched`` lists its non-zero rows."""
        return self._buffer is not None and self.weight.grad is self._buffer and self.touched is not None

    @torch.no_grad()
    def clip_grad_norm_(self, parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        """``clip_grad_norm_`` below, reading and scaling only the embedding's touched rows."""
        params = _with_grads(parameters)
        if not self.active() or not any(p is self.weight for p in params):
            return clip_grad_norm_(params, max_norm)
        others = [p for p in params if p is not self.weight]
        rows = self._buffer.index_select(0, self.touched)
        # The table's norm in the weight's own place in the list, as torch would stack it.
        total = torch.nn.utils.get_total_norm([rows if p is self.weight else p.grad for p in params])
        coefficient = _coefficient(total, max_norm)
        if coefficient is not None:
            torch._foreach_mul_([p.grad for p in others], coefficient)
            self._buffer.index_copy_(0, self.touched, rows.mul_(coefficient))  # zero rows stay zero
        return total


def _coefficient(total: torch.Tensor, max_norm: float) -> torch.Tensor | None:
    """torch's clip coefficient ``min(max_norm / (total + 1e-6), 1)``, or None where it is exactly 1 (NaN is kept)."""
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return None if coefficient.item() == 1.0 else coefficient


def _with_grads(parameters: Iterable[torch.nn.Parameter] | torch.Tensor) -> list[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):  # torch accepts a single tensor too
        parameters = [parameters]
    return [p for p in parameters if p.grad is not None]


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (2-norm) for CPU steps: the same norm and gradients, fewer passes.

    torch multiplies every gradient by the clamped coefficient even when it is 1, to avoid a
    device sync on accelerators. On CPU reading the coefficient is free, and a fold's gradient norm
    is usually under ``max_norm`` (all 150 steps of 3 epochs of ~51-token demo texts: median 0.19
    with ``max_grad_norm=1``), so the multiplication by exactly 1 is skipped; it changes no bit
    (a NaN norm still multiplies every gradient by NaN, as torch does).
    """
    params = _with_grads(parameters)
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    coefficient = _coefficient(total, max_norm)
    if coefficient is not None:
        torch._foreach_mul_([p.grad for p in params], coefficient)  # what torch's clip_grads_with_norm_ runs on CPU
    return total


def supports_row_sparse_grad(embedding: torch.nn.Module) -> bool:
    """True for a dense ``nn.Embedding`` whose backward is a plain scatter-add of rows."""
    return (
        type(embedding) is torch.nn.Embedding
        and not embedding.sparse
        and embedding.max_norm is None
        and not embedding.scale_grad_by_freq
        and "forward" not in vars(embedding)  # not already patched
    )


class RowSparseAdamW(torch.optim.AdamW):
    """Fused AdamW whose embedding table keeps moments only for the rows that ever had a gradient.

    Args:
        params: parameter groups; the table's weight must be the only parameter of its group
            (``split_table_group`` makes one), whose ``lr`` and ``weight_decay`` it follows.
        table: the ``RowSparseEmbeddingGrad`` of that weight: it lists the rows a step touched.
        **kwargs: ``torch.optim.AdamW``'s arguments; ``fused`` is always on, and ``amsgrad`` and
            ``maximize`` are refused (the table's step does not implement them).

    Every step does exactly what fused AdamW does: the other groups go through it unchanged; the
    rows with moments are gathered, stepped by the same fused kernel and scattered back; every
    other row gets ``p * (1 - lr * weight_decay)``, the kernel's own decay for zero moments. When
    the gradient is not the table's buffer, or more than half the rows have moments, the table
    takes dense fused steps over all rows from then on (with the moments moved over).
    The table's moments live on this object, not in ``state_dict()``: the trainer never saves
    optimizer state (a fold restarts from its last finished epoch's weights, not mid-epoch), and
    ``load_state_dict`` refuses rather than resume without them.
    """

    def __init__(self, params, table: RowSparseEmbeddingGrad, **kwargs) -> None:
        for name in ("amsgrad", "maximize"):
            if kwargs.get(name):
                raise ValueError(f"RowSparseAdamW does not support {name}=True, got {name}={kwargs[name]!r}")
        kwargs["fused"] = True
        super().__init__(params, **kwargs)
        weight = table.weight
        holding = [g for g in self.param_groups if any(p is weight for p in g["params"])]
        if len(holding) != 1 or len(holding[0]["params"]) != 1:
            raise ValueError(
                "params must hold the embedding table's weight alone in one param group (split_table_group), "
                f"got it in {len(holding)} group(s) of sizes {[len(g['params']) for g in holding]}"
            )
        self.table = table
        self._table_group = holding[0]
        self._rows = torch.empty(0, dtype=torch.long, device=weight.device)  # rows with moments, in joining order
        self._has_moments = torch.zeros(len(weight), dtype=torch.bool, device=weight.device)
        # The moments of ``_rows``, in the first len(_rows) rows of buffers that double when full,
        # so rows joining on most early steps do not copy all the moments every time.
        self._exp_avg = weight.new_zeros(1024, weight.shape[1])
        self._exp_avg_sq = weight.new_zeros(1024, weight.shape[1])
        self._step = torch.zeros((), dtype=torch.float32, device=weight.device)
        self._dense = False

    def load_state_dict(self, state_dict: dict) -> None:
        raise NotImplementedError(
            "RowSparseAdamW keeps the embedding table's moments outside state_dict(), so it cannot resume from one; "
            "build a torch.optim.AdamW to resume a saved optimizer"
        )

    @property
    def rows_with_moments(self) -> int:
        """How many table rows hold Adam moments (all of them once the table went dense)."""
        return len(self.table.weight) if self._dense else len(self._rows)

    @torch.no_grad()
    def step(self, closure=None):
        groups = self.param_groups
        self.param_groups = [g for g in groups if g is not self._table_group]
        try:
            # AdamW's own step without the hook wrapper torch puts on the class: this step's
            # hooks run once, around the whole step (the table's included).
            adamw_step = torch.optim.AdamW.step
            if getattr(adamw_step, "hooked", False):
                adamw_step = adamw_step.__wrapped__
            loss = adamw_step(self, closure)
        finally:
            self.param_groups = groups
        self._step_table(self._table_group)
        return loss

    def _step_table(self, group: dict) -> None:
        weight, grad = self.table.weight, self.table.weight.grad
        if grad is None:
            return  # as AdamW: a parameter without a gradient is not stepped, not even decayed
        if not self._dense:
            if not self.table.active():
                self._go_dense()
            else:
                new = self.table.touched[~self._has_moments[self.table.touched]]
                if len(new):
                    self._has_moments[new] = True
                    self._rows = torch.cat([self._rows, new])
                    if len(self._rows) > len(self._exp_avg):
                        self._exp_avg, self._exp_avg_sq = (self._grown(m) for m in (self._exp_avg, self._exp_avg_sq))
                if 2 * len(self._rows) > len(weight):
                    self._go_dense()
        self._step += 1
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        kwargs = dict(lr=lr, beta1=beta1, beta2=beta2, weight_decay=decay, eps=eps, amsgrad=False, maximize=False)
        if self._dense:
            torch._fused_adamw_([weight], [grad], [self._exp_avg], [self._exp_avg_sq], [], [self._step], **kwargs)
            return
        n = len(self._rows)
        rows = weight.index_select(0, self._rows)
        torch._fused_adamw_([rows], [grad.index_select(0, self._rows)], [self._exp_avg[:n]], [self._exp_avg_sq[:n]], [],
                            [self._step], **kwargs)
        if decay:
            weight.mul_(1 - lr * decay)  # the fused kernel's decay, bit for bit; a zero-moment row gets nothing else
        weight.index_copy_(0, self._rows, rows)

    def _grown(self, moments: torch.Tensor) -> torch.Tensor:
        grown = moments.new_zeros(max(2 * len(moments), len(self._rows)), moments.shape[1])
        grown[: len(moments)] = moments
        return grown

    def _go_dense(self) -> None:
        weight, n = self.table.weight, len(self._rows)
        for name in ("_exp_avg", "_exp_avg_sq"):
            dense = torch.zeros_like(weight)
            dense.index_copy_(0, self._rows, getattr(self, name)[:n])
            setattr(self, name, dense)
        self._dense = True


def split_table_group(groups: list[dict], weight: torch.nn.Parameter) -> list[dict]:
    """``groups`` with ``weight`` moved to a group of its own, keeping its group's settings."""
    out = []
    for group in groups:
        params = [p for p in group["params"] if p is not weight]
        if len(params) != len(group["params"]):
            out.append({**group, "params": [weight]})
        if params:
            out.append({**group, "params": params})
    return out


@contextlib.contextmanager
def row_sparse_embedding_grad(model: torch.nn.Module) -> Iterator[RowSparseEmbeddingGrad | None]:
    """Within the block, the input embedding's gradient is written to the touched rows only.

    Yields the ``RowSparseEmbeddingGrad`` (whose ``clip_grad_norm_`` the training loop calls
    instead of torch's) where the model's input embedding is a trainable dense ``nn.Embedding``,
    else None. On exit the embedding's stock forward is back; ``weight.grad`` keeps its last value.
    """
    try:
        embedding = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # not a transformers model, or one without the hook
        embedding = None
    if embedding is None or not supports_row_sparse_grad(embedding) or not embedding.weight.requires_grad:
        yield None
        return
    grads = RowSparseEmbeddingGrad(embedding)
    embedding.forward = grads.forward
    try:
        yield grads
    finally:
        vars(embedding).pop("forward", None)  # back to nn.Embedding.forward
