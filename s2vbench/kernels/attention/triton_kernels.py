"""Triton kernels of bidirectional flash attention with log-sum-exp, forward and backward.

Tensors keep the model's [B, N, H, D] layout (head_dim contiguous); every kernel takes the strides. Softmax
runs in the log2 domain (``qk_scale = scale * log2(e)``) with float32 statistics; lse is stored as a natural
log. Keys at or past ``kv_len`` (and past Nk) are masked; a query with no valid key gets out 0, lse -inf.

Two forward variants:
- ``pointer``: plain pointer arithmetic; the default, and what the CPU interpreter tests;
- ``tma``: Q/K/V/O through device-side tensor descriptors (TMA on Hopper), optional warp specialisation of
  the key loop. Only for head dims that are powers of two.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _valid_keys(KV_LENS, b, NK, HAS_LENS: tl.constexpr):
    """Keys of batch row ``b`` that attend: its ``kv_len`` when given, capped at ``NK``."""
    kv_len = NK
    if HAS_LENS:
        kv_len = tl.minimum(tl.load(KV_LENS + b).to(tl.int32), NK)
    return kv_len


@triton.jit
def _online_softmax_step(s, m_i, l_i):
    """One key block's masked log2-domain scores ``s`` against the running max and sum: (probabilities, the
    factor that rescales what was accumulated so far, new max, new sum). V is not an argument because the
    callers load it after this step: loading it before changes the compiled schedule, and the tma variant's
    shared memory."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    return p, alpha, m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _softmax_finish(acc, m_i, l_i):
    """(out, natural-log lse) from the running statistics; a row with no valid key gets out 0, lse -inf."""
    has_keys = l_i > 0
    safe_l = tl.where(has_keys, l_i, 1.0)
    out = acc / safe_l[:, None]
    lse = tl.where(has_keys, (m_i + tl.math.log2(safe_l)) * 0.6931471805599453, float("-inf"))
    return out, lse


@triton.jit
def _log2_lse(lse):
    """lse in the log2 domain for recomputing probabilities; a row without keys (-inf) gives probability 0."""
    return tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, KV_LENS,
              sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sob, son, soh,
              H, NQ, NK, qk_scale,
              HAS_LENS: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < HEAD_DIM
    kv_len = _valid_keys(KV_LENS, b, NK, HAS_LENS)

    q_ptrs = Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :]
    q = tl.load(q_ptrs, mask=(offs_m < NQ)[:, None] & d_ok[None, :], other=0.0)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for start in range(0, kv_len, BLOCK_N):
        n = start + offs_n
        n_ok = n < kv_len
        kt = tl.load(k_base + n[None, :] * skn + offs_d[:, None], mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        s = tl.where(n_ok[None, :], s, float("-inf"))
        p, alpha, m_i, l_i = _online_softmax_step(s, m_i, l_i)
        v = tl.load(v_base + n[:, None] * svn + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)

    out, lse = _softmax_finish(acc, m_i, l_i)
    o_ptrs = O + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(offs_m < NQ)[:, None] & d_ok[None, :])
    tl.store(LSE + bh * NQ + offs_m, lse, mask=offs_m < NQ)


@triton.jit
def _attn_fwd_tma(Q, K, V, O, LSE, KV_LENS, B, H, NQ, NK, qk_scale,
                  HAS_LENS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  PRECISION: tl.constexpr, WARP_SPECIALIZE: tl.constexpr):
    # Descriptors over the contiguous [B, N, H, D] tensors; out-of-range rows load as zeros and are not stored.
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    dq = tl.make_tensor_descriptor(Q, shape=[B, NQ, H, HEAD_DIM], strides=[NQ * H * HEAD_DIM, H * HEAD_DIM, HEAD_DIM, 1],
                                   block_shape=[1, BLOCK_M, 1, HEAD_DIM])
    dk = tl.make_tensor_descriptor(K, shape=[B, NK, H, HEAD_DIM], strides=[NK * H * HEAD_DIM, H * HEAD_DIM, HEAD_DIM, 1],
                                   block_shape=[1, BLOCK_N, 1, HEAD_DIM])
    dv = tl.make_tensor_descriptor(V, shape=[B, NK, H, HEAD_DIM], strides=[NK * H * HEAD_DIM, H * HEAD_DIM, HEAD_DIM, 1],
                                   block_shape=[1, BLOCK_N, 1, HEAD_DIM])
    do = tl.make_tensor_descriptor(O, shape=[B, NQ, H, HEAD_DIM], strides=[NQ * H * HEAD_DIM, H * HEAD_DIM, HEAD_DIM, 1],
                                   block_shape=[1, BLOCK_M, 1, HEAD_DIM])
    kv_len = _valid_keys(KV_LENS, b, NK, HAS_LENS)
    q = dq.load([b, pid_m * BLOCK_M, h, 0]).reshape(BLOCK_M, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start in tl.range(0, kv_len, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
        k = dk.load([b, start, h, 0]).reshape(BLOCK_N, HEAD_DIM)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        s = tl.where((start + offs_n)[None, :] < kv_len, s, float("-inf"))
        p, alpha, m_i, l_i = _online_softmax_step(s, m_i, l_i)
        v = dv.load([b, start, h, 0]).reshape(BLOCK_N, HEAD_DIM)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    out, lse = _softmax_finish(acc, m_i, l_i)
    do.store([b, pid_m * BLOCK_M, h, 0], out.to(O.dtype.element_ty).reshape(1, BLOCK_M, 1, HEAD_DIM))
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tl.store(LSE + bh * NQ + offs_m, lse, mask=offs_m < NQ)


@triton.jit
def _attn_bwd_delta(O, DO, DLSE, DELTA, sob, son, soh, sdb, sdn, sdh, H, NQ,
                    HAS_DLSE: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(dO * O) - dlse, float32 [B, H, Nq]."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    mask = (offs_m < NQ)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(O + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :], mask=mask, other=0.0)
    g = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdn + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * g.to(tl.float32), 1)
    if HAS_DLSE:
        delta -= tl.load(DLSE + bh * NQ + offs_m, mask=offs_m < NQ, other=0.0)
    tl.store(DELTA + bh * NQ + offs_m, delta, mask=offs_m < NQ)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, KV_LENS,
                   sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sdb, sdn, sdh,
                   sdkb, sdkn, sdkh, sdvb, sdvn, sdvh,
                   H, NQ, NK, scale, qk_scale,
                   HAS_LENS: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """One key block per program; loops over all query blocks."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < HEAD_DIM
    kv_len = _valid_keys(KV_LENS, b, NK, HAS_LENS)
    n_ok = offs_n < kv_len
    k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :],
                other=0.0)
    v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :],
                other=0.0)
    dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    if pid_n * BLOCK_N < kv_len:
        for start in range(0, NQ, BLOCK_M):
            m = start + offs_m
            m_ok = m < NQ
            q = tl.load(Q + b * sqb + h * sqh + m[:, None] * sqn + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :],
                        other=0.0)
            g = tl.load(DO + b * sdb + h * sdh + m[:, None] * sdn + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :],
                        other=0.0)
            lse = tl.load(LSE + bh * NQ + m, mask=m_ok, other=float("inf"))
            delta = tl.load(DELTA + bh * NQ + m, mask=m_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            lse2 = _log2_lse(lse)
            p = tl.math.exp2(s - lse2[:, None])
            p = tl.where(n_ok[None, :], p, 0.0)
            dv += tl.dot(tl.trans(p.to(g.dtype)), g, input_precision=PRECISION)
            dp = tl.dot(g, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    dk = dk * scale
    out_mask = (offs_n < NK)[:, None] & d_ok[None, :]
    tl.store(DK + b * sdkb + h * sdkh + offs_n[:, None] * sdkn + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=out_mask)
    tl.store(DV + b * sdvb + h * sdvh + offs_n[:, None] * sdvn + offs_d[None, :], dv.to(DV.dtype.element_ty),
             mask=out_mask)


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, KV_LENS,
                 sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sdb, sdn, sdh, sdqb, sdqn, sdqh,
                 H, NQ, NK, scale, qk_scale,
                 HAS_LENS: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """One query block per program; dQ accumulates in float32 over all key blocks."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < NQ
    kv_len = _valid_keys(KV_LENS, b, NK, HAS_LENS)
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :],
                other=0.0)
    g = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdn + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :],
                other=0.0)
    lse = tl.load(LSE + bh * NQ + offs_m, mask=m_ok, other=float("inf"))
    lse2 = _log2_lse(lse)
    delta = tl.load(DELTA + bh * NQ + offs_m, mask=m_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for start in range(0, kv_len, BLOCK_N):
        n = start + offs_n
        n_ok = n < kv_len
        kt = tl.load(K + b * skb + h * skh + n[None, :] * skn + offs_d[:, None], mask=n_ok[None, :] & d_ok[:, None],
                     other=0.0)
        vt = tl.load(V + b * svb + h * svh + n[None, :] * svn + offs_d[:, None], mask=n_ok[None, :] & d_ok[:, None],
                     other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        p = tl.math.exp2(s - lse2[:, None])
        p = tl.where(n_ok[None, :], p, 0.0)
        dp = tl.dot(g, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PRECISION)
    dq = dq * scale
    tl.store(DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdqn + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])
