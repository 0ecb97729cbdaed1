"""FSDP2 + context parallelism through parallelize(): gradients and AdamW steps equal the single-process run."""

import torch

from s2vbench.parallel.launch import run_ranks
from test_parallel_model import clip_inputs, probe, single_process, tiny_model

UNEVEN = (2, 18, 14)  # latent frames, h, w: a first clip of 189 tokens, which no world size here divides


def sample_batch(indices, dtype):
    """Samples whose data depend only on their global index, so any split across ranks can be reassembled."""
    from s2vbench.model import ClipShape, get_preset
    from s2vbench.model.flow import S2VBatch, synthetic_batch

    parts = [synthetic_batch(get_preset("tiny").model, ClipShape(*UNEVEN, text_tokens=10, with_motion=False),
                             1, seed=1000 + int(i), first_index=int(i)) for i in indices]
    cat = {k: torch.cat([getattr(p, k) for p in parts]) if getattr(parts[0], k) is not None else None
           for k in vars(parts[0])}
    return S2VBatch(**{k: (v.to(dtype) if v is not None and v.is_floating_point() else v) for k, v in cat.items()})


def fsdp_grad_worker(rank, world, dp, u, r, clip):
    from s2vbench.parallel import ParallelConfig, parallelize

    model = tiny_model(torch.float64)
    parallelize(model, ParallelConfig(dp_shard=dp, ulysses=u, ring=r))
    pred, prep, win = model.forward_tokens(**clip_inputs(clip, dtype=torch.float64))
    full_probe = probe(prep.layout.noisy, pred.shape[2], torch.float64)
    (pred * full_probe[:, win.first_token:win.first_token + win.num_noisy]).sum().backward()
    grads = {n: (p.grad.full_tensor() if p.grad is not None else torch.zeros(p.shape, dtype=p.dtype))
             for n, p in model.named_parameters()}
    return grads if dp == 1 else None


def test_fsdp_usp_gradients_equal_the_single_process_run():
    for clip in ("motion", "first-uneven"):
        _, want = single_process(clip, torch.float64)
        for got in run_ranks(fsdp_grad_worker, 4, 1, 2, 2, clip, timeout_s=240):
            for name, g in want.items():
                assert (got[name] - g).norm() <= 1e-9 * g.norm(), (clip, name)


def train_worker(rank, world, rep, dp, u, r, ac, steps):
    from torch.distributed.tensor import DTensor

    from s2vbench.model.flow import TrainConfig, make_optimizer
    from s2vbench.parallel import ParallelConfig, parallelize
    from s2vbench.parallel.train import data_parallel_sample_indices, parallel_train_step

    model = tiny_model(torch.float64)
    pm = parallelize(model, ParallelConfig(dp_shard=dp, ulysses=u, ring=r, ac=ac, dp_replicate=rep))
    p0 = next(p for p in model.parameters() if isinstance(p, DTensor))
    assert p0.device_mesh.ndim == (2 if rep > 1 else 1)  # HSDP: replicated over dim 0, sharded over dim 1
    cfg = TrainConfig(lr=1e-3, seed=7)
    opt = make_optimizer(model, cfg)
    losses = []
    for step in range(steps):
        idx = data_parallel_sample_indices(step, pm.dp_rank, rep * dp, 1)
        losses.append(parallel_train_step(model, opt, sample_batch(idx, torch.float64), step, cfg).loss)
    return {n: p.full_tensor() for n, p in model.named_parameters()}, losses


def single_train(dp, steps):
    from s2vbench.model.flow import TrainConfig, make_optimizer, train_step
    from s2vbench.parallel.train import data_parallel_sample_indices

    model = tiny_model(torch.float64)
    cfg = TrainConfig(lr=1e-3, seed=7)
    opt = make_optimizer(model, cfg)
    losses = []
    for step in range(steps):
        idx = torch.cat([data_parallel_sample_indices(step, d, dp, 1) for d in range(dp)])
        losses.append(train_step(model, opt, sample_batch(idx, torch.float64), step, cfg).loss)
    return {n: p.detach() for n, p in model.named_parameters()}, losses


def test_three_adamw_steps_with_ac_fsdp_usp_hsdp_and_an_uneven_length():
    # (dp_replicate, dp_shard, ulysses, ring); the last: two HSDP replica groups, each Ulysses over 2 ranks
    for rep, dp, u, r in ((1, 1, 2, 2), (1, 2, 2, 1), (2, 1, 2, 1)):
        want, want_losses = single_train(rep * dp, 3)
        for params, losses in run_ranks(train_worker, 4, rep, dp, u, r, True, 3, timeout_s=300):
            assert max(abs(a - b) for a, b in zip(losses, want_losses)) < 1e-10, (rep, dp, u, r, losses, want_losses)
            for name, p in want.items():
                assert (params[name] - p).norm() <= 1e-9 * p.norm() + 1e-12, (rep, dp, u, r, name)
        moved = sum(float((want[n] - p0.detach()).norm()) for n, p0 in tiny_model(torch.float64).named_parameters())
        assert moved > 0  # the steps really changed the parameters


def materialise_worker(rank, world):
    from s2vbench.model import WanS2V, get_preset
    from s2vbench.model.flow import TrainConfig, make_optimizer
    from s2vbench.parallel import ParallelConfig, parallelize
    from s2vbench.parallel.train import parallel_train_step

    with torch.device("meta"):
        model = WanS2V(get_preset("tiny").model)
    parallelize(model, ParallelConfig(ulysses=2))  # shards on the meta device
    model.to_empty(device="cpu")                   # each rank allocates its shards only
    torch.manual_seed(0)
    model.init_weights()                           # the official init, on the sharded parameters
    full = {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}
    opt = make_optimizer(model, TrainConfig())
    loss = parallel_train_step(model, opt, sample_batch([0], torch.float32), 0, TrainConfig()).loss
    return full, loss


def test_meta_model_materialises_shard_by_shard():
    (a, loss_a), (b, loss_b) = run_ranks(materialise_worker, 2, timeout_s=120)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)  # one model, not two
    q = a["blocks.0.self_attn.q.weight"]
    bound = (6 / (64 + 64)) ** 0.5  # xavier-uniform
    assert q.abs().max() <= bound and abs(float(q.std()) - bound / 3 ** 0.5) < 0.02
    for zero in ("head.head.weight", "trainable_cond_mask.weight", "cond_encoder.weight",
                 "audio_injector.injector.0.o.weight", "audio_injector.injector_adain_layers.0.linear.weight"):
        assert not a[zero].any(), zero
    assert torch.all(a["casual_audio_encoder.weights"] == 0.01)
    assert all(torch.isfinite(t).all() for t in a.values())
    assert loss_a == loss_b and torch.isfinite(torch.tensor(loss_a))
