"""Clocks of a training step: the matrix products of the temporal module (`temporal_gemms`)
and their matmul rate run alone (`time_gemms`), and the forward and backward seconds of one
part of a step timed inside it (`PartClock`, `step_split`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from tpwng.bench.common import sync

if TYPE_CHECKING:
    import torch


Gemm = tuple[str, tuple[int, int], tuple[int, int], int, bool, bool]


def temporal_gemms(temporal: torch.nn.Module, batch: int, length: int,
                   input_grad: bool = False) -> list[Gemm]:
    """The matrix products of one TCSAL forward + backward on ``[batch, length, D]``.

    ``(name, a_shape, b_shape, batch_count, a_transposed, b_transposed)`` per product
    (``batch_count`` 0 for ``mm``; a transposed operand is a transposed view, as autograd passes
    it): per layer the QKV, output and feed-forward projections (forward, input gradient, weight
    gradient) and QKᵀ and AV (forward and two gradients each). The first layer's input gradient
    is counted only with ``input_grad`` (the training step's features need none). The span gates
    ``cᵀx`` (``[D, heads]``, under 0.3 % of the work) are left out.
    """
    n = batch * length
    plan: list[Gemm] = []
    for i, layer in enumerate(temporal.layers):
        attn = layer.attn
        d, heads, dh = attn.dim, attn.heads, attn.head_dim
        ff = layer.ff[0].out_features
        bh, t = batch * heads, length
        for name, k, m, dx in (("qkv", d, 3 * d, input_grad or i > 0), ("out", d, d, True),
                               ("ff1", d, ff, True), ("ff2", ff, d, True)):
            plan.append((f"{name} fwd", (n, k), (k, m), 0, False, True))  # x @ Wᵀ
            if dx:
                plan.append((f"{name} dx", (n, m), (m, k), 0, False, False))  # dy @ W
            plan.append((f"{name} dw", (m, n), (n, k), 0, True, False))  # dyᵀ @ x
        plan += [("qk fwd", (t, dh), (dh, t), bh, False, True),  # Q Kᵀ
                 ("av fwd", (t, t), (t, dh), bh, False, False),  # P V
                 ("av dp", (t, dh), (dh, t), bh, False, True),  # dO Vᵀ
                 ("av dv", (t, t), (t, dh), bh, True, False),  # Pᵀ dO
                 ("qk dq", (t, t), (t, dh), bh, False, False),  # dS K
                 ("qk dk", (t, t), (t, dh), bh, True, False)]  # dSᵀ Q
    return plan


def gemm_flops(plan: list[Gemm]) -> float:
    """Floating-point operations (2 per multiply-add) of the products in ``plan``."""
    return float(sum(2 * a[0] * a[1] * b[1] * max(1, nb) for _, a, b, nb, _, _ in plan))


def time_gemms(plan: list[Gemm], device: torch.device) -> float:
    """Seconds for torch to run every product of ``plan`` once (fresh outputs, as autograd)."""
    import torch


    def operand(shape: tuple[int, int], nb: int, transposed: bool) -> torch.Tensor:
        lead = (nb,) if nb else ()
        if transposed:
            return torch.randn(*lead, shape[1], shape[0], device=device).transpose(-1, -2)
        return torch.randn(*lead, *shape, device=device)

    ops = {key: (operand(key[0], key[2], key[3]), operand(key[1], key[2], key[4]))
           for key in {(a, b, nb, at, bt) for _, a, b, nb, at, bt in plan}}
    for x, y in ops.values():  # warm-up
        torch.matmul(x, y)
    sync(device)
    t0 = time.perf_counter()
    for _, *key in plan:
        x, y = ops[tuple(key)]
        torch.matmul(x, y)
    sync(device)
    return time.perf_counter() - t0


class PartClock:
    """Forward and backward seconds of one part of a training step, timed inside the step.

    Forward: between pre- and post-forward hooks of ``modules``. Backward: from the moment the
    gradient of the last module's output is ready to the moment the last of ``params`` has its
    gradient accumulated (the CPU engine runs the part's backward in one stretch: its nodes are
    newer than those of everything it depends on)."""

    def __init__(self, modules: list[torch.nn.Module], params: list[torch.Tensor],
                 device: torch.device) -> None:
        self.device = device
        self.handles = []
        for m in modules:
            self.handles += [m.register_forward_pre_hook(self._pre),
                             m.register_forward_hook(self._post)]
        self.last = modules[-1]
        self.handles += [p.register_post_accumulate_grad_hook(self._accumulated)
                         for p in params if p.requires_grad]
        self.reset()

    def reset(self) -> None:
        self.forward = 0.0
        self.grad_start: float | None = None
        self.grad_end: float | None = None

    @property
    def backward(self) -> float:
        return self.grad_end - self.grad_start

    def _now(self) -> float:
        sync(self.device)
        return time.perf_counter()

    def _pre(self, module, args) -> None:
        self._t0 = self._now()

    def _post(self, module, args, out) -> None:
        self.forward += self._now() - self._t0
        if module is self.last and out.requires_grad:
            out.register_hook(self._grad_ready)

    def _grad_ready(self, grad: torch.Tensor) -> None:
        t = self._now()
        self.grad_start = t if self.grad_start is None else min(self.grad_start, t)

    def _accumulated(self, param: torch.Tensor) -> None:
        t = self._now()
        self.grad_end = t if self.grad_end is None else max(self.grad_end, t)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def step_split(model, step, batches, dev: torch.device) -> dict:
    """Medians over ``batches`` of one step's time, its text side and temporal module (timed
    inside the step by `PartClock`), and the temporal module's matrix products run alone
    right after; see `bench_train`."""
    import numpy as np

    text = PartClock([model.prompt, model.text_encoder],
                      [model.prompt.ctx, *model.text_encoder.parameters()], dev)
    temporal = PartClock([model.temporal], list(model.temporal.parameters()), dev)
    rows = []
    try:
        for args in batches:
            text.reset()
            temporal.reset()
            t0 = time.perf_counter()
            mask = step(*args)
            total = time.perf_counter() - t0
            plan = temporal_gemms(model.temporal, *mask.shape)
            rows.append((total, text.forward + text.backward, temporal.forward,
                         temporal.backward, time_gemms(plan, dev), gemm_flops(plan),
                         mask.shape[1]))
    finally:
        text.remove()
        temporal.remove()
    cols = (float(np.median(c)) for c in zip(*rows, strict=True))
    total, text_s, fwd, bwd, mm, flops, length = cols
    temporal_s = fwd + bwd
    ratios = [r[4] / (r[2] + r[3]) for r in rows]  # per round: matmul time / module time
    return {
        "split_steps": len(rows), "split_length": int(length),
        "split_step_s": total, "split_text_s": text_s, "split_temporal_s": temporal_s,
        "split_temporal_forward_s": fwd, "split_temporal_backward_s": bwd,
        "split_rest_s": total - text_s - temporal_s,
        "temporal_gflop": flops / 1e9,
        "temporal_gflop_per_s": flops / temporal_s / 1e9,
        "matmul_s": mm, "matmul_gflop_per_s": flops / mm / 1e9,
        "temporal_to_matmul_ratio": float(np.median(ratios)),
    }
