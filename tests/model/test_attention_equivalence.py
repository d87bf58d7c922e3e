"""TCSAL through `scaled_dot_product_attention` and through the hand-fused attention equals the
hand-written Eq. 9; the fused layer pieces equal their autograd references; streaming equals the
whole sequence."""

from __future__ import annotations

import ast
import copy
import math
import re
from pathlib import Path

import pytest
import torch

from tpwng.model import attention_kernels, tcsal
from tpwng.model.attention_kernels import FeedForwardResidual, ResidualDropout, SpanAttention
from tpwng.model.tcsal import (
    TCSAL,
    distance_ramp,
    dropout_mask,
    log_span_mask,
    soft_mask,
    span_mask,
)

D = 32
TOL = {"atol": 1e-5, "rtol": 0.0}


@pytest.fixture(autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, 2))
    yield
    torch.set_num_threads(before)


def _pair(span_scale, R, impl="sdpa", **kw) -> tuple[TCSAL, TCSAL]:
    """The same weights with a fast attention (``impl``) and the hand-written one."""
    torch.manual_seed(0)
    kw = {"layers": 2, "heads": 4, "ff_dim": 48, "dropout": 0.0} | kw
    fast = TCSAL(D, R=R, span_scale=span_scale, attention_impl=impl, **kw)
    manual = copy.deepcopy(fast)
    manual.attention_impl = "manual"
    assert fast.attention_impl == impl
    return fast, manual


def _batch(T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four videos: whole, padded at the end, padded at both ends, and one valid snippet."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, T, D, generator=gen)
    mask = torch.ones(4, T, dtype=torch.bool)
    mask[1, T // 2 :] = False
    mask[2, :3] = False
    mask[2, -5:] = False
    mask[3, 1:] = False
    return x, mask


def _loss(y: torch.Tensor, mask: torch.Tensor, seed: int = 1) -> torch.Tensor:
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    return (y * w)[mask].sum() / mask.sum()


# span_scale, R, T: the ramp of Eq. 7 bites (and, for the last, χ reaches 0 inside the sequence)
CASES = [(6.0, 4.0, 20), (256.0, 256.0, 200), (2.5, 1.5, 24), (None, 8.0, 20)]


@pytest.mark.parametrize("impl", ["sdpa", "fused", "auto"])
@pytest.mark.parametrize("span_scale,R,T", CASES)
def test_fast_attention_equals_manual_in_training(span_scale, R, T, impl):
    sdpa, manual = _pair(span_scale, R, impl)
    sdpa.train(), manual.train()  # dropout 0: deterministic
    x, mask = _batch(T)
    ys, ym = sdpa(x, mask), manual(x, mask)
    assert torch.isfinite(ys).all()
    torch.testing.assert_close(ys[mask], ym[mask], **TOL)
    _loss(ys, mask).backward()
    _loss(ym, mask).backward()
    for (name, ps), pm in zip(sdpa.named_parameters(), manual.parameters(), strict=True):
        assert torch.isfinite(ps.grad).all(), name
        torch.testing.assert_close(ps.grad, pm.grad, **TOL, msg=name)
    for layer in sdpa.layers:  # c, b of Eq. 8 learn through the mask
        assert layer.attn.span.weight.grad.abs().sum() > 0
        assert layer.attn.span.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("span_scale,R", [(6.0, 4.0), (40.0, 24.0), (None, 8.0)])
def test_sdpa_equals_manual_on_whole_videos(span_scale, R):
    sdpa, manual = _pair(span_scale, R)
    sdpa.eval(), manual.eval()
    x = torch.randn(2, 300, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = sdpa(x)
        torch.testing.assert_close(whole, manual(x), **TOL)
        for model in (sdpa, manual):
            for layer in model.layers:
                layer.attn.chunk_size = 64  # query chunks over the key window ceil(F + R)
        torch.testing.assert_close(sdpa(x), whole, **TOL)
        torch.testing.assert_close(manual(x), whole, **TOL)


@pytest.mark.parametrize("impl", ["sdpa", "manual"])
@pytest.mark.parametrize("span_scale,R,piece", [(6.0, 4.0, 1), (2.5, 1.5, 7), (16.0, 8.0, 90)])
def test_stream_equals_the_whole_sequence(impl, span_scale, R, piece):
    model = _pair(span_scale, R)[0].eval()
    model.attention_impl = impl
    for layer in model.layers:
        layer.attn.chunk_size = 32  # a long push is chunked too
    x = torch.randn(2, 130, D, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole = model(x)
        stream = model.stream()
        parts = [stream.push(x[:, i : i + piece]) for i in range(0, x.shape[1], piece)]
    assert stream.seen == x.shape[1]
    assert all(c.k.shape[2] <= c.window for c in stream.caches)
    torch.testing.assert_close(torch.cat(parts, 1), whole, **TOL)
    stream.reset()
    with torch.no_grad():
        torch.testing.assert_close(stream.push(x[:, :5]), whole[:, :5], **TOL)


def test_stream_needs_a_fixed_span_scale():
    model = TCSAL(D, layers=1, heads=2, span_scale=None, ff_dim=16)
    assert not model.streamable
    with pytest.raises(ValueError, match="span_scale"):
        model.stream()
    with pytest.raises(ValueError, match="attention_impl"):
        model.attention_impl = "flash"


def test_log_span_mask_is_log_chi_and_differentiable():
    gen = torch.Generator().manual_seed(5)
    R, Tq, Tk, q0, k0 = 4.0, 6, 9, 5, 2  # queries at 5..10, keys at 2..10
    z = (torch.rand(2, 3, Tq, generator=gen) * 6).requires_grad_()
    key_valid = torch.ones(2, Tk, dtype=torch.bool)
    key_valid[1, 3] = False  # position 5, also a query's: only that query sees it
    key_valid[1, 0] = False
    m = log_span_mask(z, R, q0, k0, Tk, key_valid)
    h = (torch.arange(q0, q0 + Tq)[:, None] - torch.arange(k0, k0 + Tk)[None, :]).float()
    chi = soft_mask(z.unsqueeze(-1), h, R)
    live = (chi > 0) & (h >= 0) & (key_valid[:, None, None, :] | (h == 0))
    assert not live[1, :, :, 0].any() and live[1, :, 0, 3].all() and not live[1, :, 1:, 3].any()
    assert torch.equal(torch.isfinite(m), live)
    torch.testing.assert_close(m[live], chi[live].log())
    g = torch.randn(m.shape, generator=gen) * live
    (grad,) = torch.autograd.grad((m[live] * g[live]).sum(), z)
    (ref,) = torch.autograd.grad((chi[live].log() * g[live]).sum(), z)
    torch.testing.assert_close(grad, ref)
    assert (grad != 0).any()


def test_padded_keys_are_never_seen_by_valid_queries_and_nothing_is_nan():
    sdpa, manual = _pair(3.0, 2.0)
    fused = copy.deepcopy(sdpa)
    fused.attention_impl = "fused"
    x, mask = _batch(16)
    mask[0] = False  # a video with no valid snippet at all
    x_changed = x.clone()
    x_changed[~mask] = 1e4  # garbage where padded
    for model in (sdpa.train(), fused.train(), manual.train()):
        y = model(x_changed, mask)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y[mask], model(x, mask)[mask], **TOL)
        _loss(y, mask).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_auto_attention_fuses_cpu_training_only(monkeypatch):
    """``auto``: the hand-fused attention while training on the CPU; SDPA in inference, under
    autocast, for frozen weights and for chunked sequences; ``fused`` wherever unchunked."""
    calls = []
    real = SpanAttention.apply
    monkeypatch.setattr(SpanAttention, "apply", lambda *a: calls.append(1) or real(*a))
    model = TCSAL(D, layers=1, heads=4, ff_dim=48, span_scale=6, R=4, dropout=0.0)
    assert model.attention_impl == "auto"
    x, mask = _batch(20)

    def fused_calls(impl: str = "auto", grad: bool = True, autocast: bool = False) -> int:
        calls.clear()
        model.attention_impl = impl
        with torch.set_grad_enabled(grad), torch.autocast("cpu", torch.bfloat16, autocast):
            model(x, mask)
        return len(calls)

    assert fused_calls() == 1
    assert fused_calls(grad=False) == 0
    assert fused_calls(autocast=True) == 0
    assert fused_calls("sdpa") == 0
    assert fused_calls("fused", grad=False) == 1
    assert fused_calls("fused", autocast=True) == 0  # the kernel runs in one dtype: SDPA serves
    model.requires_grad_(False)
    assert fused_calls() == 0
    model.requires_grad_(True)
    model.layers[0].attn.chunk_size = 8
    assert fused_calls() == 0 and fused_calls("fused") == 0


def test_fused_attention_with_dropout_equals_reference_with_the_same_masks():
    """Dropout on the weights: the same draws (`dropout_mask`, one per head in head order) give
    the same output and gradients as Eq. 9 written out with autograd."""
    B, T, H, R, p = 3, 12, 4, 4.0, 0.3
    d = D // H
    gen = torch.Generator().manual_seed(8)
    qkv = torch.randn(B, T, 3 * D, generator=gen, requires_grad=True)
    z = (torch.rand(B, H, T, generator=gen) * 6).requires_grad_()
    key_valid = torch.ones(B, T, dtype=torch.bool)
    key_valid[1, 8:] = False
    ramp = distance_ramp(T, T, 0, 0, R, key_valid, qkv.device)[:, 0]
    torch.manual_seed(7)
    got = SpanAttention.apply(qkv, z, ramp, R, H, p, span_mask)
    torch.manual_seed(7)
    heads = []
    for h in range(H):
        q, k, v = (qkv[:, :, i * D + h * d : i * D + (h + 1) * d] for i in range(3))
        m = log_span_mask(z[:, h : h + 1], R, key_len=T, key_valid=key_valid)[:, 0]
        w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d) + m, -1)
        drop, scale = dropout_mask(w.shape, p, w.device)
        heads.append((w * ~drop * scale) @ v)
    ref = torch.cat(heads, -1)
    torch.testing.assert_close(got, ref, **TOL)
    g = torch.randn(ref.shape, generator=gen)
    for u, w in zip(torch.autograd.grad(got, [qkv, z], g), torch.autograd.grad(ref, [qkv, z], g),
                    strict=True):
        torch.testing.assert_close(u, w, **TOL)
        assert (u != 0).any()


def _layer(dropout: float) -> tcsal.TCSALLayer:
    torch.manual_seed(0)
    return tcsal.TCSALLayer(D, heads=4, R=4, span_scale=6, ff_dim=48, dropout=dropout).train()


def test_fused_layer_equals_the_autograd_reference():
    layer = _layer(0.0)
    x = torch.randn(3, 10, D, requires_grad=True)
    a = torch.randn(3, 10, D, requires_grad=True)
    fused = layer._block(x, a.clone())
    x1 = layer.norm1(x + a)
    ref = layer.norm2(x1 + layer.ff(x1))
    torch.testing.assert_close(fused, ref, **TOL)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(fused, [x, a, *layer.parameters()], g, allow_unused=True)
    want = torch.autograd.grad(ref, [x, a, *layer.parameters()], g, allow_unused=True)
    for i, (u, w) in enumerate(zip(got, want, strict=True)):
        if w is None:
            continue
        torch.testing.assert_close(u, w, **TOL, msg=f"input {i}")


def test_fused_dropout_equals_reference_with_the_same_masks():
    p = 0.3
    layer = _layer(p)
    lin1, lin2 = layer.ff[0], layer.ff[3]
    x = torch.randn(40, D, requires_grad=True)
    torch.manual_seed(7)
    got = FeedForwardResidual.apply(x, lin1.weight, lin1.bias, lin2.weight, lin2.bias, p, p)
    torch.manual_seed(7)  # the same draws, in the same order
    drop_h, alpha = dropout_mask(torch.Size([40, 48]), p, x.device)
    drop_y, scale = dropout_mask(torch.Size([40, D]), p, x.device)
    h = torch.relu(lin1(x)) * ~drop_h * alpha
    ref = x + lin2(h) * ~drop_y * scale
    torch.testing.assert_close(got, ref, **TOL)
    g = torch.randn_like(ref)
    params = [x, *layer.ff.parameters()]
    for u, w in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(ref, params, g),
                    strict=True):
        torch.testing.assert_close(u, w, **TOL)


def test_dropout_mask_rate_and_scale():
    torch.manual_seed(0)
    shape = torch.Size([1000, 1001])  # not a multiple of 4 elements' worth of words
    for p in (0.1, 0.5):
        drop, scale = dropout_mask(shape, p, torch.device("cpu"))
        assert drop.shape == shape and drop.dtype == torch.bool
        rate = drop.float().mean().item()
        assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / shape.numel())
        assert scale == pytest.approx(1 / (1 - p), rel=1e-4)
    drop, scale = dropout_mask(shape, 1.0, torch.device("cpu"))
    assert drop.all() and scale == 0.0
    x = torch.zeros(64, 100, D)
    a = torch.ones(64, 100, D)
    out = ResidualDropout.apply(x, a, 0.5)
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert abs(out.mean().item() - 1.0) < 0.02


def test_no_private_tcsal_name_is_used_elsewhere():
    root = Path(tcsal.__file__).parent
    for path in root.rglob("*.py"):
        if path.name == "tcsal.py":
            continue
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("tcsal"):
                assert not [a.name for a in node.names if a.name.startswith("_")], path
        assert not re.search(r"\btcsal\._\w", text), path


def test_tcsal_holds_no_kernel_and_the_kernels_take_eq7_from_it():
    """tcsal.py is Eq. 7-9 with no hand-written autograd function; the kernels import nothing of
    it (they are handed its Eq. 7, `span_mask`)."""
    def parse(module) -> ast.Module:
        return ast.parse(Path(module.__file__).read_text())

    bases = [ast.unparse(b) for node in ast.walk(parse(tcsal)) if isinstance(node, ast.ClassDef)
             for b in node.bases]
    assert not [b for b in bases if "Function" in b]
    imported = [node.module or "" for node in ast.walk(parse(attention_kernels))
                if isinstance(node, ast.ImportFrom)]
    assert not [m for m in imported if "tcsal" in m]
    assert any("Function" in ast.unparse(b) for node in ast.walk(parse(attention_kernels))
               if isinstance(node, ast.ClassDef) for b in node.bases)


def _float64_run(impl: str, span_bias: float, R: float, grad: bool = True):
    """A 2-layer TCSAL (3 × 64 × 64, one padded video, dropout 0) in float64 with the span bias
    ``b`` of Eq. 8 set to ``span_bias``: the output at valid positions, the parameter gradients
    of a weighted sum, and (``manual`` only) the first layer's spans."""
    B, T, dim, F = 3, 64, 64, 64.0
    torch.manual_seed(0)
    model = TCSAL(dim, layers=2, heads=4, R=R, span_scale=F, ff_dim=128, dropout=0.0,
                  attention_impl=impl)
    for layer in model.layers:
        torch.nn.init.constant_(layer.attn.span.bias, span_bias)
    model = model.double().train()
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(B, T, dim, generator=gen, dtype=torch.float64)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 40:] = False
    if not grad:
        with torch.no_grad():
            return model.eval()(x, mask)[mask], None, None
    y = model(x, mask)
    w = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (y * w)[mask].sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    spans = None
    if impl == "manual":
        with torch.no_grad():
            spans = model.forward_with_attention(x, mask)[2][0]
    return y.detach()[mask], grads, spans


def _assert_float64_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Equal to 1e-10 of the reference's largest magnitude, element by element."""
    assert got.dtype == want.dtype == torch.float64, what
    err = (got - want).abs().max().item() / want.abs().max().item()
    assert err <= 1e-10, f"{what}: relative error {err:.2e}"


# span bias b, R: χ reaches 0 inside the sequence (keys cut), or stays > 0 but below 1 (ramp only)
FLOAT64_CASES = {"mask cuts": (-2.0, 16.0), "mask does not cut": (2.0, 40.0)}


@pytest.mark.parametrize("case", FLOAT64_CASES)
def test_attention_paths_agree_in_float64(case):
    """In float64 ``sdpa`` and ``fused`` compute the same function as ``manual``: outputs and
    every parameter gradient (the spans' c, b included) to 1e-10, nothing rounded to float32."""
    span_bias, R = FLOAT64_CASES[case]
    y_ref, g_ref, z = _float64_run("manual", span_bias, R)
    T = z.shape[-1]
    h = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).double()
    chi = soft_mask(z.unsqueeze(-1), h, R)[:, :, h >= 0]  # causal pairs, first layer
    assert (chi < 1).any() and (chi == 1).any()  # the ramp of Eq. 7 bites
    assert (chi == 0).any() == (case == "mask cuts")
    for impl in ("sdpa", "fused"):
        y, grads, _ = _float64_run(impl, span_bias, R)
        _assert_float64_close(y, y_ref, f"{impl} output")
        assert grads.keys() == g_ref.keys()
        for name, g in grads.items():
            _assert_float64_close(g, g_ref[name], f"{impl} {name}")
        for layer in range(2):
            assert g_ref[f"layers.{layer}.attn.span.bias"].abs().sum() > 0
            assert g_ref[f"layers.{layer}.attn.span.weight"].abs().sum() > 0
    # inference: SDPA's default dispatch (no gradient) and the fused path agree too
    y_ref = _float64_run("manual", span_bias, R, grad=False)[0]
    for impl in ("sdpa", "fused"):
        _assert_float64_close(_float64_run(impl, span_bias, R, grad=False)[0], y_ref,
                              f"{impl} inference output")


def test_float64_mask_keeps_float64_and_float32_stays_float32():
    """The mask and its span gradient are computed in the spans' dtype (float32 at least): in
    float64 a χ below float32's smallest normal number is still χ, not 0."""
    R, Tq = 4.0, 6
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        z = (torch.rand(1, 2, Tq, generator=torch.Generator().manual_seed(2)) * 6).to(dtype)
        want = torch.float64 if dtype == torch.float64 else torch.float32
        m = log_span_mask(z.requires_grad_(), R)
        assert m.dtype == want
        (g,) = torch.autograd.grad(m[torch.isfinite(m)].sum(), z)
        assert g.dtype == dtype
    # R = 1: query 1 sees key 0 (h = 1) with χ = (R + z - h) / R = z = 1e-300, far below
    # float32's smallest normal 1.2e-38: log χ is finite and ∂ log χ / ∂z = 1 / (R χ)
    z = torch.tensor([[[0.5, 1e-300]]], dtype=torch.float64, requires_grad=True)
    m = log_span_mask(z, 1.0)
    assert m[0, 0, 1, 0].item() == pytest.approx(math.log(1e-300), rel=1e-12)
    (g,) = torch.autograd.grad(m[0, 0, 1, 0], z)
    assert g[0, 0, 1].item() == pytest.approx(1e300, rel=1e-12)
    z32 = z.detach().float()  # 1e-300 is 0 in float32: χ = 0, the key is cut
    assert log_span_mask(z32, 1.0)[0, 0, 1, 0].item() == float("-inf")
