"""TCSAL's three attention paths against the float64 ``manual`` one (`tpwng bench gpu`):
relative errors of outputs and gradients in float32 and float64, printed as a table."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


ATTENTION_CHECKED = ("manual", "sdpa", "fused")


def attention_check(device: torch.device, batch: int = 8, length: int = 256, dim: int = 512,
                    layers: int = 4, span_bias: float = -2.0, seed: int = 0) -> dict:
    """TCSAL's three attention paths (`attention_impl`) in float32 and float64 on `device`,
    against the float64 ``manual`` path.

    One model (``layers`` × 4 heads, F = ``length``, R = F / 4, FFN 4 × ``dim``, dropout 0, the
    span bias ``b`` of Eq. 8 set to ``span_bias``: the ramp of Eq. 7 bites and χ reaches 0 inside
    the sequence) on random input ``batch`` × ``length`` × ``dim``, one video padded from half its
    length; forward and backward of a fixed random weighting of the valid outputs. Errors:
    ``‖y − y_ref‖ / ‖y_ref‖`` over valid outputs and, per parameter tensor,
    ``‖g − g_ref‖ / ‖g_ref‖``: the worst tensor, and the worst of the spans' ``c, b``.
    """
    import copy

    import torch

    from tpwng.model.tcsal import TCSAL, soft_mask

    start = time.perf_counter()
    F, R = float(length), length / 4
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, dim, generator=gen, dtype=torch.float64).to(device)
    weight = torch.randn(batch, length, dim, generator=gen, dtype=torch.float64).to(device)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[min(1, batch - 1), length // 2 :] = False
    mask = mask.to(device)
    torch.manual_seed(seed)
    model = TCSAL(dim, layers=layers, heads=4, R=R, span_scale=F, ff_dim=4 * dim, dropout=0.0)
    for layer in model.layers:
        torch.nn.init.constant_(layer.attn.span.bias, span_bias)

    def run(impl: str, dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m = copy.deepcopy(model).to(device=device, dtype=dtype).train()
        m.attention_impl = impl
        y = m(x.to(dtype), mask)
        (y * weight.to(dtype))[mask].sum().backward()
        return y.detach()[mask].double(), {n: p.grad.double() for n, p in m.named_parameters()}

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).norm() / b.norm()).item()

    y_ref, g_ref = run("manual", torch.float64)
    ref_model = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
    ref_model.attention_impl = "manual"
    with torch.no_grad():
        z = ref_model.forward_with_attention(x, mask)[2][0]  # first layer's spans
    h = torch.arange(length, device=device, dtype=torch.float64)
    h = h[:, None] - h[None, :]
    pairs = (h >= 0) & mask[:, None, :, None] & mask[:, None, None, :]  # causal, both valid
    chi = soft_mask(z.unsqueeze(-1), h, R)[pairs.expand(-1, z.shape[1], -1, -1)]
    errors: dict = {}
    for dtype in (torch.float32, torch.float64):
        for impl in ATTENTION_CHECKED:
            y, grads = run(impl, dtype)
            per = {n: rel(g, g_ref[n]) for n, g in grads.items()}
            worst = max(per, key=per.get)
            errors.setdefault(str(dtype).removeprefix("torch."), {})[impl] = {
                "output": rel(y, y_ref), "param_grads": per[worst], "param_grads_worst": worst,
                "span_grads": max(e for n, e in per.items() if ".attn.span." in n),
            }
    worst64 = max(max(e["output"], e["param_grads"]) for e in errors["float64"].values())
    return {
        "shape": [batch, length, dim], "layers": layers, "heads": 4, "F": F, "R": R,
        "span_bias": span_bias, "padded": "video 1 from snippet length / 2",
        "chi_zero_fraction": (chi == 0).double().mean().item(),
        "chi_ramp_fraction": ((chi > 0) & (chi < 1)).double().mean().item(),
        "reference": f"manual, float64, on {device.type}",
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "errors": errors, "float64_max_rel_err": worst64, "float64_agree": worst64 <= 1e-10,
        "seconds": time.perf_counter() - start,
    }


def attention_table(check: dict) -> None:
    """The relative errors of `attention_check`, one line per dtype and path, on stdout."""
    b, t, d = check["shape"]
    print(f"\nattention paths vs {check['reference']} ({b} x {t} x {d}, {check['layers']} "
          f"layers, R {check['R']:g}; chi = 0 on {check['chi_zero_fraction']:.0%} of causal "
          f"pairs): relative errors")
    print(f"{'dtype':<8} {'path':<7} {'output':>9} {'params':>9} {'spans':>9}  worst tensor")
    for dtype, paths in check["errors"].items():
        for impl, e in paths.items():
            print(f"{dtype:<8} {impl:<7} {e['output']:9.1e} {e['param_grads']:9.1e} "
                  f"{e['span_grads']:9.1e}  {e['param_grads_worst']}")
    verdict = "agree" if check["float64_agree"] else "DISAGREE"
    print(f"float64 paths {verdict} to {check['float64_max_rel_err']:.1e} (bound 1e-10)")
