"""Fused RTG-in-K/V attention with episode memory: Triton forward and backward (FlashAttention-style).

Why a kernel: every layer of the MORE-3S model attends over (memory, current window) with keys and
values that first get the RTG term ``phi(R) @ W`` added. Done in PyTorch that is three extra
[B, H, T, D] tensors (K', V', their concatenation with the memory) plus a [B, H, T, M+T] score
matrix per layer. Here one forward launch

* reads q, the memory and the window's k / v in tiles and adds the RTG term to each key / value
  tile on the fly (F fused multiply-adds per element, in fp32, rounded to the input dtype) --
  the attention never reads K' / V' back from memory;
* runs the online softmax (running max and sum in fp32, exp2 with a folded 1/ln 2), masking
  invalid memory slots, padded keys and the causal triangle only where a tile needs it;
* writes ``k_inj`` / ``v_inj`` (the injected K' / V' of the window) as side outputs, because the
  next window's memory needs them: each program stores the tiles of its diagonal loop (its own
  rows), which it has just computed anyway; and the log-sum-exp per query for the backward pass.

The backward launch recomputes the probabilities from the saved log-sum-exp (FlashAttention-2),
reading the saved ``k_inj`` / ``v_inj`` (they exist anyway, as outputs): each program owns one
window tile, for which it accumulates dK'/dV' over the queries that see it and dQ over every key
the tile's queries see. dK = dK' (+ the caller's gradient on k_inj), likewise dV, and the RTG
weights get ``dW[h] = sum_{b,t} rtg[b,t]^T dK'[b,h,t]`` in PyTorch (a tiny matmul). Memory and
RTG features get no gradient.

Semantics are those of ``more3s.model.attention`` (the reference path is the oracle in tests).
Layers, as in Triton's fused-attention tutorial and FlashAttention: ``@triton.jit`` kernels -> launchers that validate and pass every stride
-> ``MoreAttentionFunction`` (autograd) -> ``more_attention_triton`` (functional alias).

Grid: axis 0 = query tile (key tile too in the backward), axis 1 = batch * head; base offsets are
computed in int64.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

__all__ = [
    "KERNEL_DTYPES",
    "MAX_FEATURES",
    "MAX_GRID_Y",
    "MAX_HEAD_DIM",
    "AttentionKernelConfig",
    "MoreAttentionFunction",
    "more_attention_triton",
    "more_attention_fwd",
    "more_attention_bwd",
    "aot_compile",
    "interpreting",
    "supports",
    "unsupported_reason",
]

# What the kernel covers (``unsupported_reason`` says which limit a call breaks; ``more3s.model.attention``
# falls back to the reference there). Head dims that are not a power of two are padded inside the kernel with
# masked loads, so any D in [1, MAX_HEAD_DIM] works.
MAX_HEAD_DIM = 128
MAX_FEATURES = 16  # RTG features F; larger F > 2 runs as one dot over F zero-padded to MAX_FEATURES
MAX_GRID_Y = 65535  # CUDA's limit on grid axis 1, which carries B*H
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_TILE = 16  # smallest tile side tl.dot takes (tiles, the padded head dim and padded F are at least this)
_F_PAD = tl.constexpr(MAX_FEATURES)  # the same limit, visible inside @triton.jit functions

LOG2E = 1.4426950408889634  # exp(x) == exp2(x * log2(e)); exp2 is the native GPU instruction


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unsupported_reason(q: torch.Tensor, rtg: torch.Tensor, w_k: torch.Tensor) -> str | None:
    """Why the kernel cannot take a call with q [B, H, T, D], rtg [B, T, F], w_k / w_v [H, F, D] (None when it can).

    Shapes are taken as consistent (``more3s.model.attention.check_attention_inputs`` checks them first)."""
    B, H, T, D = q.shape
    Fdim = rtg.shape[-1]
    if q.device.type == "cpu" and not interpreting():
        return "Triton needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU)"
    if q.device.type not in ("cpu", "cuda"):
        return f"Triton kernel does not run on device type {q.device.type!r}"
    if q.dtype not in KERNEL_DTYPES:
        return f"Triton kernel supports float32/float16/bfloat16, not {q.dtype}"
    if w_k.dtype not in KERNEL_DTYPES or rtg.dtype not in KERNEL_DTYPES:
        return f"Triton kernel needs rtg / w_k / w_v in float32/float16/bfloat16, got {rtg.dtype} / {w_k.dtype}"
    if not 1 <= D <= MAX_HEAD_DIM:
        return f"Triton kernel supports head dim 1..{MAX_HEAD_DIM}, got {D}"
    if not 1 <= Fdim <= MAX_FEATURES:
        return f"Triton kernel supports 1..{MAX_FEATURES} RTG features, got {Fdim}"
    if T == 0 or B * H == 0:
        return f"empty input (B={B}, H={H}, T={T})"
    if B * H > MAX_GRID_Y:
        return f"Triton grid axis 1 (B*H) is limited to {MAX_GRID_Y}, got B*H={B * H}"
    return None


def supports(q: torch.Tensor, rtg: torch.Tensor, w_k: torch.Tensor) -> bool:
    """Whether the kernel covers this call (see ``unsupported_reason``)."""
    return unsupported_reason(q, rtg, w_k) is None


@dataclass(frozen=True)
class AttentionKernelConfig:
    """Tile sizes and launch options (None everywhere = pick by device: fixed large tiles under the
    CPU interpreter, where each program costs time; on the GPU a fixed choice by head dim, T and dtype
    (``_default_config``; nothing is autotuned).

    block_m / block_n: forward query / key tiles (block_m must be a multiple of block_n, so the
    causal mask is needed only on the diagonal tiles). block: the backward's window tile (dK/dV for
    that key tile, dQ for that query tile); block_inner: the backward's inner step over queries
    (dK/dV) and keys (dQ); block must be a multiple of block_inner. All powers of two >= 16.
    """

    block_m: int = 64
    block_n: int = 64
    block: int = 64
    block_inner: int = 32
    num_warps: int = 4
    num_stages: int = 2
    bwd_num_warps: int = 4
    bwd_num_stages: int = 2

    def __post_init__(self):
        for name in ("block_m", "block_n", "block", "block_inner"):
            val = getattr(self, name)
            if val < MIN_TILE or val & (val - 1):
                raise ValueError(f"AttentionKernelConfig.{name} must be a power of two >= {MIN_TILE}, got {val}")
        if self.block_m % self.block_n:
            raise ValueError(f"block_m ({self.block_m}) must be a multiple of block_n ({self.block_n})")
        if self.block % self.block_inner:
            raise ValueError(f"block ({self.block}) must be a multiple of block_inner ({self.block_inner})")
        for name in ("num_warps", "num_stages", "bwd_num_warps", "bwd_num_stages"):
            if getattr(self, name) < 1:
                raise ValueError(f"AttentionKernelConfig.{name} must be >= 1, got {getattr(self, name)}")


# Under the interpreter every program instance costs ~ms of Python, so use few, large tiles.
INTERPRETER_CONFIG = AttentionKernelConfig(block_m=64, block_n=64, block=64, block_inner=64)


# ----------------------------------------------------------------------------------------------
# jitted helpers


@triton.jit
def _inject_tile(x_base, rtg_base, w_base, offs_t, offs_d, n_rows, D,
                 stride_xt, stride_xd, stride_rt, stride_rf, stride_wf, stride_wd,
                 F: tl.constexpr, INJ_PREC: tl.constexpr):
    """x[t, :] + sum_f rtg[t, f] * w[f, :] for one [rows, BLOCK_D] tile, in fp32 (0 outside bounds).

    F <= 2 (the default model has F = 1): F unrolled fp32 FMAs, exact. Larger F: one [rows, F_PAD] x
    [F_PAD, BLOCK_D] tensor-core dot over F zero-padded to F_PAD = MAX_FEATURES in near-fp32 precision (INJ_PREC =
    "tf32x3" on the GPU): unrolled, the F weight rows stay live across the key loop in a replicated
    layout and the forward spills registers.
    """
    row_ok = offs_t < n_rows
    mask = row_ok[:, None] & (offs_d[None, :] < D)
    x = tl.load(x_base + offs_t[:, None] * stride_xt + offs_d[None, :] * stride_xd,
                mask=mask, other=0.0).to(tl.float32)
    if F <= 2:
        for f in tl.static_range(F):
            r = tl.load(rtg_base + offs_t * stride_rt + f * stride_rf, mask=row_ok, other=0.0).to(tl.float32)
            w = tl.load(w_base + f * stride_wf + offs_d * stride_wd, mask=offs_d < D, other=0.0).to(tl.float32)
            x += r[:, None] * w[None, :]
    else:
        offs_f = tl.arange(0, _F_PAD)  # F <= MAX_FEATURES, zero-padded
        r = tl.load(rtg_base + offs_t[:, None] * stride_rt + offs_f[None, :] * stride_rf,
                    mask=row_ok[:, None] & (offs_f[None, :] < F), other=0.0).to(tl.float32)  # [rows, F_PAD]
        w = tl.load(w_base + offs_f[:, None] * stride_wf + offs_d[None, :] * stride_wd,
                    mask=(offs_f[:, None] < F) & (offs_d[None, :] < D), other=0.0).to(tl.float32)  # [F_PAD, BLOCK_D]
        x += tl.dot(r, w, input_precision=INJ_PREC)
    return x


@triton.jit
def _load_tile(base, offs_t, offs_d, n_rows, D, stride_t, stride_d):
    mask = (offs_t[:, None] < n_rows) & (offs_d[None, :] < D)
    return tl.load(base + offs_t[:, None] * stride_t + offs_d[None, :] * stride_d, mask=mask, other=0.0)


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, offs_m, offs_n, offs_d, lo, hi, valid_lo, n_keys, D, qk_scale,
               k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
               rtg_base, stride_rt, stride_rf,
               wk_base, stride_wkf, stride_wkd, wv_base, stride_wvf, stride_wvd,
               kpm_base, stride_kpt, kinj_base, vinj_base, stride_ot, stride_od,
               F: tl.constexpr, INJECT: tl.constexpr, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr,
               WRITE_INJ: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr, INJ_PREC: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """Online-softmax accumulation over keys [lo, hi) in steps of BLOCK_N.

    Keys outside [valid_lo, n_keys) are masked. INJECT: the keys are the window's, add the RTG term
    on the fly (else: memory, already injected). CAUSAL: this range overlaps the diagonal.
    WRITE_INJ: also store the injected K' / V' tiles (the side outputs k_inj / v_inj).
    """
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n  # [BLOCK_N]
        if INJECT:
            k = _inject_tile(k_base, rtg_base, wk_base, cols, offs_d, n_keys, D, stride_kt, stride_kd,
                             stride_rt, stride_rf, stride_wkf, stride_wkd, F, INJ_PREC)
            v = _inject_tile(v_base, rtg_base, wv_base, cols, offs_d, n_keys, D, stride_vt, stride_vd,
                             stride_rt, stride_rf, stride_wvf, stride_wvd, F, INJ_PREC)
            # round as k_inj / v_inj are rounded, so the attention sees exactly the returned K', V'
            k = k.to(k_base.dtype.element_ty)
            v = v.to(v_base.dtype.element_ty)
            if WRITE_INJ:
                inj_mask = (cols[:, None] < n_keys) & (offs_d[None, :] < D)
                inj_ptr = cols[:, None] * stride_ot + offs_d[None, :] * stride_od
                tl.store(kinj_base + inj_ptr, k, mask=inj_mask)
                tl.store(vinj_base + inj_ptr, v, mask=inj_mask)
        else:
            k = _load_tile(k_base, cols, offs_d, n_keys, D, stride_kt, stride_kd)
            v = _load_tile(v_base, cols, offs_d, n_keys, D, stride_vt, stride_vd)
        if UPCAST:  # interpreter: bf16 tl.dot is wrong there, compute in fp32
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)  # [BLOCK_M, BLOCK_N] fp32
        ok = (cols >= valid_lo) & (cols < n_keys)
        if HAS_KPM:
            ok &= tl.load(kpm_base + cols * stride_kpt, mask=cols < n_keys, other=0) != 0
        ok2 = ok[None, :]
        if CAUSAL:
            ok2 = ok2 & (cols[None, :] <= offs_m[:, None])
        qk = tl.where(ok2, qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))  # m_i starts finite, so m_new is never -inf
        p = tl.math.exp2(qk - m_new[:, None])  # masked entries: exp2(-inf) = 0
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


# ----------------------------------------------------------------------------------------------
# forward kernel


@triton.jit
def _more_attn_fwd_kernel(
    Q, K, V, RTG, WK, WV, KM, VM, MEMLEN, KPM,
    Out, KInj, VInj, LSE,
    stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd, stride_rb, stride_rt, stride_rf,
    stride_wkh, stride_wkf, stride_wkd, stride_wvh, stride_wvf, stride_wvd,
    stride_kmb, stride_kmh, stride_kmt, stride_kmd, stride_vmb, stride_vmh, stride_vmt, stride_vmd,
    stride_kpb, stride_kpt, stride_ob, stride_oh, stride_ot, stride_od,  # Out, KInj, VInj: contiguous [B, H, T, D]
    H, T, M, D, qk_scale,
    F: tl.constexpr, HAS_MEM: tl.constexpr, HAS_MEMLEN: tl.constexpr, HAS_KPM: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr, INJ_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows of this tile
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    rtg_base = RTG + b * stride_rb
    wk_base = WK + h * stride_wkh
    wv_base = WV + h * stride_wvh
    kpm_base = KPM + b * stride_kpb
    o_off = b * stride_ob + h * stride_oh
    io_mask = (offs_m[:, None] < T) & (offs_d[None, :] < D)
    io_ptr = offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od

    q = _load_tile(q_base, offs_m, offs_d, T, D, stride_qt, stride_qd)
    if UPCAST:
        q = q.to(tl.float32)
    q_real = offs_m < T
    if HAS_KPM:
        q_real &= tl.load(kpm_base + offs_m * stride_kpt, mask=offs_m < T, other=0) != 0

    # Running max starts at a finite floor, not -inf: a row with every key masked then keeps
    # m_i = floor, alpha = exp2(0) = 1 and l_i = 0, instead of exp2(-inf - -inf) = NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if HAS_MEM:  # valid memory slots: [M - mem_len[b], M); skip the tiles before the first one
        mem_lo = 0
        if HAS_MEMLEN:
            ml = tl.load(MEMLEN + b).to(tl.int32)
            mem_lo = M - tl.minimum(tl.maximum(ml, 0), M)
        acc, l_i, m_i = _fwd_inner(
            acc, l_i, m_i, q, offs_m, offs_n, offs_d, (mem_lo // BLOCK_N) * BLOCK_N, M, mem_lo, M, D,
            qk_scale, KM + b * stride_kmb + h * stride_kmh, VM + b * stride_vmb + h * stride_vmh,
            stride_kmt, stride_kmd, stride_vmt, stride_vmd, rtg_base, stride_rt, stride_rf,
            wk_base, stride_wkf, stride_wkd, wv_base, stride_wvf, stride_wvd, kpm_base, stride_kpt,
            KInj + o_off, VInj + o_off, stride_ot, stride_od,
            F, False, False, False, False, UPCAST, DOT_PREC, INJ_PREC, BLOCK_N)
    # window keys strictly before this tile: no causal mask needed
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, offs_m, offs_n, offs_d, 0, pid_m * BLOCK_M, 0, T, D, qk_scale,
        k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd, rtg_base, stride_rt, stride_rf,
        wk_base, stride_wkf, stride_wkd, wv_base, stride_wvf, stride_wvd, kpm_base, stride_kpt,
        KInj + o_off, VInj + o_off, stride_ot, stride_od,
        F, True, False, HAS_KPM, False, UPCAST, DOT_PREC, INJ_PREC, BLOCK_N)
    # the diagonal tiles: causal mask. Their keys are exactly this program's rows, so this loop also
    # writes the side outputs K' / V' for them (already computed for the attention: no extra work).
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, offs_m, offs_n, offs_d, pid_m * BLOCK_M, tl.minimum((pid_m + 1) * BLOCK_M, T),
        0, T, D, qk_scale,
        k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd, rtg_base, stride_rt, stride_rf,
        wk_base, stride_wkf, stride_wkd, wv_base, stride_wvf, stride_wvd, kpm_base, stride_kpt,
        KInj + o_off, VInj + o_off, stride_ot, stride_od,
        F, True, True, HAS_KPM, True, UPCAST, DOT_PREC, INJ_PREC, BLOCK_N)

    seen = q_real & (l_i > 0.0)
    l_safe = tl.where(seen, l_i, 1.0)
    out = tl.where(seen[:, None], acc / l_safe[:, None], 0.0)  # padding query -> 0
    tl.store(Out + o_off + io_ptr, out.to(Out.dtype.element_ty), mask=io_mask)
    # log2-sum-exp2 of the scaled scores; +inf for rows that must get no gradient (p = 0 there)
    lse = tl.where(seen, m_i + tl.math.log2(l_safe), float("inf"))
    tl.store(LSE + pid_bh.to(tl.int64) * T + offs_m, lse, mask=offs_m < T)


# ----------------------------------------------------------------------------------------------
# backward kernel


@triton.jit
def _bwd_dkdv(dk, dv, k, v, offs_n, lo, hi, kp_ok, T, D, qk_scale,
              q_base, do_base, lse_base, delta_base,
              stride_qt, stride_qd, stride_dot, stride_dod,
              CAUSAL: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """dK', dV' of one key tile, accumulated over the queries [lo, hi) (steps of BLOCK_M)."""
    offs_d = tl.arange(0, BLOCK_D)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_tile(q_base, offs_m, offs_d, T, D, stride_qt, stride_qd)
        do = _load_tile(do_base, offs_m, offs_d, T, D, stride_dot, stride_dod)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(lse_base + offs_m, mask=offs_m < T, other=float("inf"))  # inf -> p = 0
        delta = tl.load(delta_base + offs_m, mask=offs_m < T, other=0.0)
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PREC)  # [BLOCK_N, BLOCK_M]
        ok = kp_ok[:, None]
        if CAUSAL:
            ok = ok & (offs_n[:, None] <= offs_m[None, :])
        pT = tl.where(ok, tl.math.exp2(qkT * qk_scale - lse[None, :]), 0.0)
        dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PREC)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)  # [BLOCK_N, BLOCK_M]
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(q.dtype), q, input_precision=DOT_PREC)
    return dk, dv


@triton.jit
def _bwd_dq(dq, q, do, lse, delta, offs_m, lo, hi, valid_lo, n_keys, D, qk_scale,
            k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd, kpm_base, stride_kpt,
            CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dQ of one query tile, accumulated over the keys [lo, hi) (steps of BLOCK_N)."""
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base, cols, offs_d, n_keys, D, stride_kt, stride_kd)
        v = _load_tile(v_base, cols, offs_d, n_keys, D, stride_vt, stride_vd)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)  # [BLOCK_M, BLOCK_N]
        ok = (cols >= valid_lo) & (cols < n_keys)
        if HAS_KPM:
            ok &= tl.load(kpm_base + cols * stride_kpt, mask=cols < n_keys, other=0) != 0
        ok2 = ok[None, :]
        if CAUSAL:
            ok2 = ok2 & (cols[None, :] <= offs_m[:, None])
        p = tl.where(ok2, tl.math.exp2(qk * qk_scale - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
    return dq


@triton.jit
def _more_attn_bwd_kernel(
    Q, KInj, VInj, KM, VM, MEMLEN, KPM, DO, LSE, DELTA,
    DQ, DK, DV,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,  # KInj and VInj: contiguous, same strides
    stride_kmb, stride_kmh, stride_kmt, stride_kmd,
    stride_vmb, stride_vmh, stride_vmt, stride_vmd,
    stride_kpb, stride_kpt,
    stride_dob, stride_doh, stride_dot, stride_dod,
    stride_gb, stride_gh, stride_gt, stride_gd,  # DQ, DK, DV: contiguous [B, H, T, D]
    H, T, M, D, sm_scale, qk_scale,
    HAS_MEM: tl.constexpr, HAS_MEMLEN: tl.constexpr, HAS_KPM: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_INNER: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_t = pid * BLOCK + tl.arange(0, BLOCK)  # this program's window rows (keys, then queries)
    offs_d = tl.arange(0, BLOCK_D)
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = KInj + b * stride_kb + h * stride_kh
    v_base = VInj + b * stride_kb + h * stride_kh
    do_base = DO + b * stride_dob + h * stride_doh
    kpm_base = KPM + b * stride_kpb
    lse_base = LSE + pid_bh.to(tl.int64) * T
    delta_base = DELTA + pid_bh.to(tl.int64) * T
    g_off = b * stride_gb + h * stride_gh
    io_mask = (offs_t[:, None] < T) & (offs_d[None, :] < D)
    g_ptr = offs_t[:, None] * stride_gt + offs_d[None, :] * stride_gd

    # ---- phase 1: dK', dV' of the key tile offs_t (seen by the queries i >= its first row)
    k = _load_tile(k_base, offs_t, offs_d, T, D, stride_kt, stride_kd)
    v = _load_tile(v_base, offs_t, offs_d, T, D, stride_kt, stride_kd)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    kp_ok = offs_t < T
    if HAS_KPM:
        kp_ok &= tl.load(kpm_base + offs_t * stride_kpt, mask=offs_t < T, other=0) != 0
    dk = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    dk, dv = _bwd_dkdv(dk, dv, k, v, offs_t, pid * BLOCK, tl.minimum((pid + 1) * BLOCK, T), kp_ok, T, D,
                       qk_scale, q_base, do_base, lse_base, delta_base,
                       stride_qt, stride_qd, stride_dot, stride_dod,
                       True, UPCAST, DOT_PREC, BLOCK_INNER, BLOCK_D)
    dk, dv = _bwd_dkdv(dk, dv, k, v, offs_t, (pid + 1) * BLOCK, T, kp_ok, T, D,
                       qk_scale, q_base, do_base, lse_base, delta_base,
                       stride_qt, stride_qd, stride_dot, stride_dod,
                       False, UPCAST, DOT_PREC, BLOCK_INNER, BLOCK_D)
    tl.store(DK + g_off + g_ptr, (dk * sm_scale).to(DK.dtype.element_ty), mask=io_mask)
    tl.store(DV + g_off + g_ptr, dv.to(DV.dtype.element_ty), mask=io_mask)

    # ---- phase 2: dQ of the query tile offs_t over memory and window keys
    q = _load_tile(q_base, offs_t, offs_d, T, D, stride_qt, stride_qd)
    do = _load_tile(do_base, offs_t, offs_d, T, D, stride_dot, stride_dod)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(lse_base + offs_t, mask=offs_t < T, other=float("inf"))
    delta = tl.load(delta_base + offs_t, mask=offs_t < T, other=0.0)
    dq = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    if HAS_MEM:
        mem_lo = 0
        if HAS_MEMLEN:
            ml = tl.load(MEMLEN + b).to(tl.int32)
            mem_lo = M - tl.minimum(tl.maximum(ml, 0), M)
        dq = _bwd_dq(dq, q, do, lse, delta, offs_t, (mem_lo // BLOCK_INNER) * BLOCK_INNER, M, mem_lo, M, D,
                     qk_scale, KM + b * stride_kmb + h * stride_kmh, VM + b * stride_vmb + h * stride_vmh,
                     stride_kmt, stride_kmd, stride_vmt, stride_vmd, kpm_base, stride_kpt,
                     False, False, UPCAST, DOT_PREC, BLOCK_INNER, BLOCK_D)
    dq = _bwd_dq(dq, q, do, lse, delta, offs_t, 0, pid * BLOCK, 0, T, D, qk_scale,
                 k_base, v_base, stride_kt, stride_kd, stride_kt, stride_kd, kpm_base, stride_kpt,
                 False, HAS_KPM, UPCAST, DOT_PREC, BLOCK_INNER, BLOCK_D)
    dq = _bwd_dq(dq, q, do, lse, delta, offs_t, pid * BLOCK, tl.minimum((pid + 1) * BLOCK, T), 0, T, D,
                 qk_scale, k_base, v_base, stride_kt, stride_kd, stride_kt, stride_kd, kpm_base, stride_kpt,
                 True, HAS_KPM, UPCAST, DOT_PREC, BLOCK_INNER, BLOCK_D)
    tl.store(DQ + g_off + g_ptr, (dq * sm_scale).to(DQ.dtype.element_ty), mask=io_mask)


# ----------------------------------------------------------------------------------------------
# launchers


def _default_config(T: int, D: int, device: torch.device,
                    dtype: torch.dtype = torch.float16) -> AttentionKernelConfig:
    """Tiles per device: large ones under the interpreter; on the GPU a choice by head dim and T.

    GPU rule of thumb (FlashAttention-2 / Triton tutorial): 64-row query tiles for short windows
    (T <= 64 wastes less of a 128 tile), 128 for long ones; narrower key tiles for D = 128; 8 warps
    in the backward. Compiled ahead of time for sm_90 (triton.compile + ptxas, no GPU needed), the
    fp16/bf16 ones fit in 255 registers without spills for F <= 2 (up to ~100 bytes of spills for
    F = 16, D >= 40, T <= 64); fp32 (exact FMA dots) spills ~100 bytes at D = 128. Their speed has
    not been tuned on a GPU yet (bench/test_attention.py measures it; pass an
    AttentionKernelConfig to try others).
    """
    if device.type == "cpu":
        return INTERPRETER_CONFIG
    wide = _block_d(D) > 64
    if dtype == torch.float32:  # exact fp32 dots run on FMA units: small tiles keep them in registers
        return AttentionKernelConfig(block_m=32, block_n=32, block=32, block_inner=16, num_warps=8 if wide else 4,
                                     num_stages=1, bwd_num_warps=8 if wide else 4, bwd_num_stages=1)
    bwd = dict(block=64, block_inner=16 if wide else 32, bwd_num_warps=8, bwd_num_stages=2)
    if T <= 64:
        return AttentionKernelConfig(block_m=64, block_n=32 if wide else 64, num_warps=8 if wide else 4,
                                     num_stages=2, **bwd)
    return AttentionKernelConfig(block_m=128, block_n=32 if wide else 64, num_warps=8, num_stages=2 if wide else 3,
                                 **bwd)


def _block_d(D: int) -> int:
    """The head dim padded to a power of two that tl.dot takes."""
    return max(MIN_TILE, triton.next_power_of_2(D))


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 follows torch's own matmul policy: TF32 only where the user allowed it for matmuls.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _check(name: str, x: torch.Tensor, shape: tuple, device: torch.device, dtypes=None) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device}, expected {device}")
    if dtypes is not None and x.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {x.dtype}; the Triton kernel supports {dtypes}")


def _check_launch(q, k, v, rtg, w_k, w_v, k_mem, v_mem, mem_len, key_padding_mask):
    if q.dim() != 4:
        raise ValueError(f"q must have shape [B, H, T, D], got {list(q.shape)}")
    B, H, T, D = q.shape
    dev = q.device
    if dev.type == "cpu" and not interpreting():
        raise ValueError("the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter)")
    if not (1 <= D <= MAX_HEAD_DIM):
        raise ValueError(f"head dim D must be in [1, {MAX_HEAD_DIM}] for the Triton kernel, got {D}")
    if T == 0 or B * H == 0:
        raise ValueError(f"empty input: B={B}, H={H}, T={T}")
    if B * H > MAX_GRID_Y:
        raise ValueError(f"B*H={B * H} exceeds the grid axis-1 limit {MAX_GRID_Y}")
    _check("q", q, (B, H, T, D), dev, KERNEL_DTYPES)
    for name, x in (("k", k), ("v", v)):
        _check(name, x, (B, H, T, D), dev, (q.dtype,))
    if rtg.dim() != 3:
        raise ValueError(f"rtg must have shape [B, T, F], got {list(rtg.shape)}")
    Fdim = rtg.shape[2]
    if not (1 <= Fdim <= MAX_FEATURES):
        raise ValueError(f"rtg must have 1..{MAX_FEATURES} features for the Triton kernel, got F={Fdim}")
    _check("rtg", rtg, (B, T, Fdim), dev, KERNEL_DTYPES)
    _check("w_k", w_k, (H, Fdim, D), dev, KERNEL_DTYPES)
    _check("w_v", w_v, (H, Fdim, D), dev, (w_k.dtype,))
    M = 0
    if k_mem is not None:
        M = k_mem.shape[2] if k_mem.dim() == 4 else -1
        _check("k_mem", k_mem, (B, H, M, D), dev, (q.dtype,))
        _check("v_mem", v_mem, (B, H, M, D), dev, (q.dtype,))
    if mem_len is not None:
        if k_mem is None:
            raise ValueError("mem_len was given without k_mem / v_mem")
        _check("mem_len", mem_len, (B,), dev)
        if mem_len.dtype.is_floating_point or mem_len.dtype == torch.bool:
            raise TypeError(f"mem_len must be an integer tensor, got {mem_len.dtype}")
    if key_padding_mask is not None:
        _check("key_padding_mask", key_padding_mask, (B, T), dev, (torch.bool,))
    return B, H, T, D, Fdim, M


def _on_device(device: torch.device):
    # Triton launches on the current CUDA device: make it the tensors' one (multi-GPU hosts).
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _unit_last(x: torch.Tensor) -> torch.Tensor:
    # Any strides are correct (all are passed); a non-unit last stride only costs coalescing.
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


def more_attention_fwd(q, k, v, rtg, w_k, w_v, k_mem=None, v_mem=None, mem_len=None, key_padding_mask=None,
                       config: AttentionKernelConfig | None = None):
    """Forward launch. q, k, v [B, H, T, D]; rtg [B, T, F]; w_k, w_v [H, F, D]; k_mem, v_mem
    [B, H, M, D] or None; mem_len [B] int or None; key_padding_mask [B, T] bool or None.

    Returns out, k_inj, v_inj ([B, H, T, D], q's dtype) and lse [B, H, T] fp32 (log2 domain,
    +inf on rows without gradient).
    """
    B, H, T, D, Fdim, M = _check_launch(q, k, v, rtg, w_k, w_v, k_mem, v_mem, mem_len, key_padding_mask)
    cfg = config or _default_config(T, D, q.device, q.dtype)
    q, k, v, rtg, w_k, w_v = (_unit_last(x) for x in (q, k, v, rtg, w_k, w_v))
    has_mem = k_mem is not None and M > 0
    if has_mem:
        k_mem, v_mem = _unit_last(k_mem), _unit_last(v_mem)
    else:
        k_mem = v_mem = q  # never read (HAS_MEM=False); any valid pointer
    has_memlen = has_mem and mem_len is not None
    memlen = mem_len.to(torch.int32) if has_memlen else q.new_zeros(1, dtype=torch.int32)
    has_kpm = key_padding_mask is not None
    kpm = key_padding_mask.view(torch.uint8) if has_kpm else q.new_zeros((1, 1), dtype=torch.uint8)

    out = torch.empty((B, H, T, D), device=q.device, dtype=q.dtype)
    k_inj = torch.empty_like(out)
    v_inj = torch.empty_like(out)
    lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    sm_scale = 1.0 / math.sqrt(D)
    grid = (triton.cdiv(T, cfg.block_m), B * H)
    with _on_device(q.device):
        _more_attn_fwd_kernel[grid](
            q, k, v, rtg, w_k, w_v, k_mem, v_mem, memlen, kpm,
            out, k_inj, v_inj, lse,
            *q.stride(), *k.stride(), *v.stride(), *rtg.stride(), *w_k.stride(), *w_v.stride(),
            *k_mem.stride(), *v_mem.stride(), *kpm.stride(), *out.stride(),
            H, T, M if has_mem else 0, D, sm_scale * LOG2E,
            F=Fdim, HAS_MEM=has_mem, HAS_MEMLEN=has_memlen, HAS_KPM=has_kpm,
            UPCAST=q.device.type == "cpu", DOT_PREC=_dot_precision(q.dtype),
            INJ_PREC="ieee" if q.device.type == "cpu" else "tf32x3",
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=_block_d(D),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return out, k_inj, v_inj, lse


def more_attention_bwd(dout, q, k_inj, v_inj, out, lse, k_mem=None, v_mem=None, mem_len=None,
                       key_padding_mask=None, config: AttentionKernelConfig | None = None):
    """Backward launch: returns dq, dk', dv' ([B, H, T, D], q's dtype), the gradients of the loss
    with respect to q and the injected window keys / values (what the attention saw)."""
    B, H, T, D = q.shape
    if dout.shape != q.shape:
        raise ValueError(f"dout must have shape {list(q.shape)}, got {list(dout.shape)}")
    cfg = config or _default_config(T, D, q.device, q.dtype)
    dout = _unit_last(dout)
    if dout.dtype != q.dtype:
        dout = dout.to(q.dtype)
    has_mem = k_mem is not None and k_mem.shape[2] > 0
    M = k_mem.shape[2] if has_mem else 0
    if has_mem:
        k_mem, v_mem = _unit_last(k_mem), _unit_last(v_mem)
    else:
        k_mem = v_mem = q
    has_memlen = has_mem and mem_len is not None
    memlen = mem_len.to(torch.int32) if has_memlen else q.new_zeros(1, dtype=torch.int32)
    has_kpm = key_padding_mask is not None
    kpm = key_padding_mask.view(torch.uint8) if has_kpm else q.new_zeros((1, 1), dtype=torch.uint8)
    # delta_i = sum_d dO_id O_id (the softmax-Jacobian row term), fp32 [B, H, T]
    delta = (dout.float() * out.float()).sum(-1).contiguous()
    dq = torch.empty((B, H, T, D), device=q.device, dtype=q.dtype)
    dk = torch.empty_like(dq)
    dv = torch.empty_like(dq)
    sm_scale = 1.0 / math.sqrt(D)
    grid = (triton.cdiv(T, cfg.block), B * H)
    with _on_device(q.device):
        _more_attn_bwd_kernel[grid](
            q, k_inj, v_inj, k_mem, v_mem, memlen, kpm, dout, lse, delta,
            dq, dk, dv,
            *q.stride(), *k_inj.stride(), *k_mem.stride(), *v_mem.stride(), *kpm.stride(),
            *dout.stride(), *dq.stride(),
            H, T, M, D, sm_scale, sm_scale * LOG2E,
            HAS_MEM=has_mem, HAS_MEMLEN=has_memlen, HAS_KPM=has_kpm,
            UPCAST=q.device.type == "cpu", DOT_PREC=_dot_precision(q.dtype),
            BLOCK=cfg.block, BLOCK_INNER=cfg.block_inner, BLOCK_D=_block_d(D),
            num_warps=cfg.bwd_num_warps, num_stages=cfg.bwd_num_stages,
        )
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# ahead-of-time compilation (no GPU needed)

_TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def aot_compile(arch: int = 90, dtype: torch.dtype = torch.float16, head_dim: int = 64, features: int = 1,
                window: int = 512, has_mem: bool = True, has_memlen: bool = True, has_kpm: bool = True,
                w_dtype: torch.dtype = torch.float32, config: AttentionKernelConfig | None = None):
    """Compiles the forward and backward kernels for CUDA compute capability ``arch`` (80, 90, ...)
    with Triton's bundled ptxas, without a GPU: catches what the CPU interpreter accepts but the
    compiler rejects (dot sizes, dtypes, layouts). Returns the two compiled kernels (``.metadata``
    has ``shared``; ``.asm`` the ptx / cubin). The process must not run with TRITON_INTERPRET=1.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if not isinstance(_more_attn_fwd_kernel, triton.runtime.JITFunction):
        raise RuntimeError("aot_compile needs compiled kernels: run it without TRITON_INTERPRET=1")
    if dtype not in _TRITON_TYPES or w_dtype not in _TRITON_TYPES:
        raise TypeError(f"dtype / w_dtype must be one of {list(_TRITON_TYPES)}")
    cfg = config or _default_config(window, head_dim, torch.device("cuda"), dtype)
    t, wt = "*" + _TRITON_TYPES[dtype], "*" + _TRITON_TYPES[w_dtype]
    block_d = _block_d(head_dim)
    dot_prec = "ieee" if dtype == torch.float32 else "tf32"
    target = GPUTarget("cuda", arch, 32)

    def build(fn, pointers, constexprs, num_warps, num_stages):
        sig = {}
        for name in fn.arg_names:
            if name in constexprs:
                sig[name] = "constexpr"
            elif name in pointers:
                sig[name] = pointers[name]
            elif name in ("qk_scale", "sm_scale"):
                sig[name] = "fp32"
            else:
                sig[name] = "i32"
        return triton.compile(ASTSource(fn, sig, constexprs), target=target,
                              options=dict(num_warps=num_warps, num_stages=num_stages))

    fwd_ptrs = {n: t for n in ("Q", "K", "V", "KM", "VM", "Out", "KInj", "VInj")}
    fwd_ptrs.update(RTG=wt, WK=wt, WV=wt, MEMLEN="*i32", KPM="*u8", LSE="*fp32")
    fwd = build(_more_attn_fwd_kernel, fwd_ptrs, dict(
        F=features, HAS_MEM=has_mem, HAS_MEMLEN=has_memlen, HAS_KPM=has_kpm, UPCAST=False, DOT_PREC=dot_prec,
        INJ_PREC="tf32x3", BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d), cfg.num_warps, cfg.num_stages)
    bwd_ptrs = {n: t for n in ("Q", "KInj", "VInj", "KM", "VM", "DO", "DQ", "DK", "DV")}
    bwd_ptrs.update(MEMLEN="*i32", KPM="*u8", LSE="*fp32", DELTA="*fp32")
    bwd = build(_more_attn_bwd_kernel, bwd_ptrs, dict(
        HAS_MEM=has_mem, HAS_MEMLEN=has_memlen, HAS_KPM=has_kpm, UPCAST=False, DOT_PREC=dot_prec,
        BLOCK=cfg.block, BLOCK_INNER=cfg.block_inner, BLOCK_D=block_d), cfg.bwd_num_warps, cfg.bwd_num_stages)
    return fwd, bwd


# ----------------------------------------------------------------------------------------------
# autograd


class MoreAttentionFunction(torch.autograd.Function):
    """Gradients to q, k, v, w_k, w_v; none to rtg, memory, mem_len, the padding mask or config."""

    @staticmethod
    def forward(ctx, q, k, v, rtg, w_k, w_v, k_mem, v_mem, mem_len, key_padding_mask, config):
        out, k_inj, v_inj, lse = more_attention_fwd(q, k, v, rtg, w_k, w_v, k_mem, v_mem, mem_len,
                                                    key_padding_mask, config)
        ctx.save_for_backward(q, k_inj, v_inj, out, lse, rtg, k_mem, v_mem, mem_len, key_padding_mask)
        ctx.w_dtypes = (w_k.dtype, w_v.dtype)
        ctx.config = config
        ctx.set_materialize_grads(False)
        return out, k_inj, v_inj

    @staticmethod
    def backward(ctx, dout, dk_inj, dv_inj):
        q, k_inj, v_inj, out, lse, rtg, k_mem, v_mem, mem_len, kpm = ctx.saved_tensors
        if dout is not None:
            dq, dk, dv = more_attention_bwd(dout, q, k_inj, v_inj, out, lse, k_mem, v_mem, mem_len, kpm,
                                            ctx.config)
        else:
            dq, dk, dv = torch.zeros_like(q), torch.zeros_like(q), torch.zeros_like(q)
        # K' = K + rtg W_k: the caller's gradient on k_inj adds to the attention's
        if dk_inj is not None:
            dk = dk + dk_inj.to(dk.dtype)
        if dv_inj is not None:
            dv = dv + dv_inj.to(dv.dtype)
        dw_k = dw_v = None
        r32 = rtg.float()
        if ctx.needs_input_grad[4]:
            dw_k = torch.einsum("bhtd,btf->hfd", dk.float(), r32).to(ctx.w_dtypes[0])  # [H, F, D]
        if ctx.needs_input_grad[5]:
            dw_v = torch.einsum("bhtd,btf->hfd", dv.float(), r32).to(ctx.w_dtypes[1])  # [H, F, D]
        return (dq if ctx.needs_input_grad[0] else None, dk if ctx.needs_input_grad[1] else None,
                dv if ctx.needs_input_grad[2] else None, None, dw_k, dw_v, None, None, None, None, None)


def more_attention_triton(q, k, v, rtg, w_k, w_v, k_mem=None, v_mem=None, mem_len=None, key_padding_mask=None,
                          config: AttentionKernelConfig | None = None):
    """Functional alias of ``MoreAttentionFunction``: (out, k_inj, v_inj), each [B, H, T, D].

    Memory and RTG features are detached (data, per the contract). Prefer
    ``more3s.model.attention.more_attention``, which validates the inputs and falls back to the
    reference for cases this kernel does not cover.
    """
    if k_mem is not None:
        k_mem, v_mem = k_mem.detach(), v_mem.detach()
    return MoreAttentionFunction.apply(q, k, v, rtg.detach(), w_k, w_v, k_mem, v_mem, mem_len,
                                       key_padding_mask, config)
