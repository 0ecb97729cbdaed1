"""Ring attention: each rank keeps its queries while key/value blocks travel around the ring.

Forward, step i: the receive of the next k/v block is posted before step i's attention and waited on after
it (double buffering); partial results merge through their log-sum-exp in float32. Backward uses the global
(out, lse) with every block; the dK/dV accumulators travel with their block in float32 and arrive home after
the last step. Keys past ``valid[c]`` in ring chunk c are padding and never attended.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..kernels.attention.reference import merge_attention
from .comm import RingExchange
from .local_attention import local_backward, local_forward


def ring_forward(q, k, v, group: dist.ProcessGroup | None, valid: list[int], backend: str = "torch",
                 trace: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out in q's dtype, lse in >= float32) over every ring rank's k/v chunk; no autograd."""
    ex = RingExchange(group, trace=trace) if group is not None else None
    r, me = (ex.size, ex.rank) if ex is not None else (1, 0)
    acc = torch.promote_types(q.dtype, torch.float32)  # merge and accumulate in >= float32
    if r == 1 and valid[0] > 0:  # one block (Ulysses alone): nothing to merge
        if trace is not None:
            trace.append("attn 0")
        n = valid[0]
        o, l = local_forward(q, k[:, :n], v[:, :n], backend)
        return o.to(q.dtype), l.to(acc)
    out = lse = None
    k_cur, v_cur = k, v
    for step in range(r):
        src = (me - step) % r
        handle = None
        if step + 1 < r:
            (k_nxt, v_nxt), handle = ex.start([k_cur, v_cur], label=f"kv{step + 1}")
        if trace is not None:
            trace.append(f"attn {step}")
        n = valid[src]
        if n > 0:
            o, l = local_forward(q, k_cur[:, :n], v_cur[:, :n], backend)
            out, lse = (o.to(acc), l.to(acc)) if out is None else merge_attention(out, lse, o, l)
        if handle is not None:
            ex.wait(handle)
            k_cur, v_cur = k_nxt, v_nxt
    if out is None:  # every key this rank could see is padding
        out = torch.zeros_like(q, dtype=acc)
        lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), float("-inf"), device=q.device, dtype=acc)
    return out.to(q.dtype), lse


def ring_backward(dout, q, k, v, out, lse, group: dist.ProcessGroup | None, valid: list[int], backend: str = "torch",
                  trace: list | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) in the inputs' dtype from the global (out, lse); no autograd."""
    ex = RingExchange(group, kind="ring_p2p_bwd", trace=trace) if group is not None else None
    r, me = (ex.size, ex.rank) if ex is not None else (1, 0)
    dout = dout.contiguous()
    if r == 1 and valid[0] > 0:  # one block (Ulysses alone): nothing to accumulate
        n = valid[0]
        dq, dk, dv = local_backward(dout, q, k[:, :n], v[:, :n], out, lse, backend)
        if n < k.shape[1]:  # padded keys get no gradient
            dk, dv = (F.pad(g, (0, 0, 0, 0, 0, k.shape[1] - n)) for g in (dk, dv))
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
    acc = torch.promote_types(q.dtype, torch.float32)
    dq = torch.zeros_like(q, dtype=acc)
    dk_acc = torch.zeros_like(k, dtype=acc)
    dv_acc = torch.zeros_like(v, dtype=acc)
    k_cur, v_cur = k, v
    acc_in = acc_handle = None  # the incoming dK/dV accumulators and their pending exchange
    for step in range(r):
        src = (me - step) % r
        kv_handle = None
        if step + 1 < r:
            (k_nxt, v_nxt), kv_handle = ex.start([k_cur, v_cur], label=f"kv{step + 1}")
        n = valid[src]
        gk = gv = None
        if n > 0:
            gq, gk, gv = local_backward(dout, q, k_cur[:, :n], v_cur[:, :n], out, lse, backend)
            dq += gq
        if acc_handle is not None:  # the accumulators of block src, from the ranks that held it before
            ex.wait(acc_handle)
            dk_acc, dv_acc = acc_in
        if gk is not None:
            dk_acc[:, :n] += gk
            dv_acc[:, :n] += gv
        if r > 1:  # pass them on with the block; after the last step they reach the block's owner
            acc_in, acc_handle = ex.start([dk_acc, dv_acc], label=f"dkv{step}")
        if kv_handle is not None:
            ex.wait(kv_handle)
            k_cur, v_cur = k_nxt, v_nxt
    if acc_handle is not None:
        ex.wait(acc_handle)
        dk_acc, dv_acc = acc_in
    return dq.to(q.dtype), dk_acc.to(k.dtype), dv_acc.to(v.dtype)


__all__ = ["ring_backward", "ring_forward"]
