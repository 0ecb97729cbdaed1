"""Counted bytes per collective kind equal the closed-form volumes of bench/analytic.py, for each strategy."""

import torch

from s2vbench.parallel.launch import run_ranks
from test_parallel_train import UNEVEN, sample_batch, tiny_model


def bytes_worker(rank, world, layouts, bf16=False):
    from s2vbench.model.flow import TrainConfig, make_optimizer
    from s2vbench.parallel import ParallelConfig, parallelize
    from s2vbench.parallel.comm import count_comm
    from s2vbench.parallel.train import data_parallel_sample_indices, parallel_train_step

    out = {}
    for dp, u, r, ac, *rep in layouts:
        rep = rep[0] if rep else 1
        model = tiny_model(torch.float32)
        pm = parallelize(model, ParallelConfig(dp_shard=dp, ulysses=u, ring=r, ac=ac, dp_replicate=rep),
                         param_dtype=torch.bfloat16 if bf16 else None)
        cfg = TrainConfig(lr=1e-3, dtype="bfloat16" if bf16 else "float32")
        opt = make_optimizer(model, cfg)
        batch = sample_batch(data_parallel_sample_indices(0, pm.dp_rank, rep * dp, 1), torch.float32)
        with count_comm(fsdp=True) as counter:
            stats = parallel_train_step(model, opt, batch, 0, cfg)
        assert torch.isfinite(torch.tensor(stats.loss))
        out[(dp, u, r, ac, rep)] = {k: (s.calls, s.bytes_sent, s.bytes_recv) for k, s in counter.stats.items()}
    return out


def expected(world, dp, u, r, bf16=False, rep=1):
    from s2vbench.bench.analytic import fsdp_comm_volume, training_step_comm_volume
    from s2vbench.model import get_preset, sequence_layout

    cfg = get_preset("tiny").model
    layout = sequence_layout(cfg, *UNEVEN, with_motion=False)
    vol = training_step_comm_volume(cfg, layout, 1, u, r, elem_bytes=2 if bf16 else 4)
    vol.update(fsdp_comm_volume(cfg, world // rep, param_bytes=2 if bf16 else 4, reduce_bytes=4, with_motion=False,
                                replicate=rep))
    return {k: (v.calls, v.bytes_sent) for k, v in vol.items()}


def check(world, layouts, bf16=False):
    for rank_stats in run_ranks(bytes_worker, world, layouts, bf16, timeout_s=300):
        for (dp, u, r, ac, rep), stats in rank_stats.items():
            got = {k: (calls, sent) for k, (calls, sent, _) in stats.items()}
            want = expected(world, dp, u, r, bf16, rep)
            assert got == want, ((dp, u, r, ac, rep), got, want)
            assert all(sent == recv for _, sent, recv in stats.values())


def test_two_ranks():
    check(2, [(1, 2, 1, False), (1, 1, 2, True), (2, 1, 1, False)])


def test_four_ranks():
    # the last two: HSDP, two replica groups of 2 ranks (FSDP-sharded, then Ulysses)
    check(4, [(1, 2, 2, True), (1, 1, 4, False), (1, 4, 1, False), (2, 2, 1, True), (2, 1, 1, False, 2),
              (1, 2, 1, True, 2)])


def test_bf16_params_fp32_reduction():
    """bf16 parameters and activations (2-byte all-gathers and all-to-alls), float32 gradient reduction and
    ring accumulators (4 bytes)."""
    check(4, [(1, 2, 2, True), (2, 1, 2, False)], bf16=True)
