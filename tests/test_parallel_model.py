"""The tiny Wan-S2V under Ulysses, ring and USP on gloo ranks against the single-process model (fp32)."""

import torch

from s2vbench.parallel.launch import run_ranks

# (clip frames, latent h, latent w, with motion): 416 tokens with frames split across ranks, and a first clip
# of 189 tokens, which no world size here divides.
CLIPS = {"motion": (4, 16, 16, True), "first-uneven": (2, 18, 14, False)}


def clip_inputs(name, seed=0, dtype=torch.float32):
    from s2vbench.model import get_preset

    f, h, w, motion = CLIPS[name]
    cfg = get_preset("tiny").model
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    d = dict(x=r(1, 16, f, h, w), t=torch.tensor([700.0]), context=r(1, 10, cfg.text_dim),
             ref_latents=r(1, 16, 1, h, w), audio_input=r(1, 25, cfg.audio_dim, 4 * f),
             motion_latents=r(1, 16, 19, h, w) if motion else None, cond_states=r(1, 16, f, h, w))
    return {k: v.to(dtype) if v is not None and v.is_floating_point() else v for k, v in d.items()}


def tiny_model(dtype=torch.float32):
    from s2vbench.model import WanS2V, get_preset

    torch.manual_seed(0)
    model = WanS2V(get_preset("tiny").model).to(dtype)
    with torch.no_grad():  # wake the zero-initialised audio path and head so every parameter has a gradient
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.05)
    return model


def probe(n_tokens, width, dtype, seed=1):
    return torch.randn(1, n_tokens, width, generator=torch.Generator().manual_seed(seed)).to(dtype)


def single_process(name, dtype):
    model = tiny_model(dtype)
    pred, prep, _ = model.forward_tokens(**clip_inputs(name, dtype=dtype))
    (pred * probe(*pred.shape[1:], dtype)).sum().backward()
    return pred.detach(), {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                           for n, p in model.named_parameters()}


def cp_worker(rank, world, layouts, clip, backend, dtype=torch.float32):
    import torch.distributed as dist

    from s2vbench.parallel.comm import count_comm
    from s2vbench.parallel.context import apply_context_parallel, gather_noisy_tokens
    from s2vbench.parallel.mesh import ParallelConfig, build_mesh

    out = {}
    for u, r in layouts:
        pm = build_mesh(ParallelConfig(dp_shard=world // (u * r), ulysses=u, ring=r), num_heads=4)
        model = tiny_model(dtype)
        apply_context_parallel(model, pm.cp, backend)
        with count_comm() as counter:
            pred, prep, win = model.forward_tokens(**clip_inputs(clip, dtype=dtype))
        kinds = {k: vars(s) for k, s in counter.stats.items()}
        full_probe = probe(prep.layout.noisy, pred.shape[2], dtype)
        (pred * full_probe[:, win.first_token:win.first_token + win.num_noisy]).sum().backward()
        grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}
        for g in grads.values():  # sum over the context-parallel group
            dist.all_reduce(g, group=pm.cp_group())
        with count_comm() as gathered:
            full = gather_noisy_tokens(pred.detach(), win, prep.layout.noisy, pm.cp.size, pm.cp_group())
        # each rank sends its window's worth of rows (padded to the window) to every other rank
        window_rows = win.tokens.shape[1]
        assert gathered.stats["all_gather"].bytes_sent == (pm.cp.size - 1) * pred.shape[0] * window_rows * \
            pred.shape[2] * pred.element_size(), vars(gathered.stats["all_gather"])
        out[(u, r)] = dict(pred=full, grads=grads, kinds=kinds)
    return out


def check64(results, clip):
    """float64: output and every parameter gradient equal the single-process run to 1e-9 (any logic error in
    sharding, padding, injection windows or gradient flow shows up as an O(1) difference)."""
    pred, grads = single_process(clip, torch.float64)
    for res in results:
        for layout, r in res.items():
            assert (r["pred"] - pred).norm() / pred.norm() < 1e-9, (layout, "pred")
            for name, g in grads.items():
                assert (r["grads"][name] - g).norm() <= 1e-9 * g.norm(), (layout, name)


def check32(results, clip):
    """float32: output within 1e-5 of the single-process fp32 run; gradients within 1e-5 as a whole and, per
    parameter, no further from the float64 truth than 2x the single-process fp32 error (some gradients, like
    a key bias feeding an RMSNorm, nearly cancel, so fp32 summation order alone moves them by ~1e-4)."""
    pred32, grads32 = single_process(clip, torch.float32)
    pred64, grads64 = single_process(clip, torch.float64)
    for res in results:
        for layout, r in res.items():
            assert (r["pred"] - pred32).norm() / pred32.norm() <= 1e-5, (layout, "pred")
            flat = lambda g: torch.cat([v.flatten() for v in g.values()])  # noqa: E731
            assert (flat(r["grads"]) - flat(grads32)).norm() / flat(grads32).norm() <= 1e-5, layout
            for name, g64 in grads64.items():
                ours = (r["grads"][name].double() - g64).norm()
                single = (grads32[name].double() - g64).norm()
                assert ours <= 2 * single + 1e-6 * g64.norm(), (layout, name, float(ours), float(single))


def test_two_ranks_ulysses_and_ring_forward_and_every_gradient():
    for clip in CLIPS:
        check64(run_ranks(cp_worker, 2, [(2, 1), (1, 2)], clip, "torch", torch.float64, timeout_s=180), clip)
        results = run_ranks(cp_worker, 2, [(2, 1), (1, 2)], clip, "torch", timeout_s=180)
        check32(results, clip)
    # the audio injection sent nothing: only self-attention communicated, even with frames split across ranks
    kinds = results[0][(2, 1)]["kinds"]
    assert set(kinds) == {"all_to_all"} and kinds["all_to_all"]["calls"] == 4 * 4  # q, k, v, out per block
    assert set(results[0][(1, 2)]["kinds"]) == {"ring_p2p"}


def test_four_ranks_usp_and_uneven_lengths():
    for clip in CLIPS:
        layouts = [(2, 2), (1, 4), (4, 1)]
        check64(run_ranks(cp_worker, 4, layouts, clip, "torch", torch.float64, timeout_s=240), clip)
        check32(run_ranks(cp_worker, 4, layouts, clip, "torch", timeout_s=240), clip)


def ac_worker(rank, world, u, r):
    from s2vbench.parallel.checkpointing import enable_activation_checkpointing
    from s2vbench.parallel.comm import count_comm
    from s2vbench.parallel.context import apply_context_parallel
    from s2vbench.parallel.mesh import ParallelConfig, build_mesh

    pm = build_mesh(ParallelConfig(ulysses=u, ring=r), num_heads=4)
    out = {}
    for ac in (False, True):
        model = tiny_model(torch.float64)
        apply_context_parallel(model, pm.cp)
        if ac:
            enable_activation_checkpointing(model)
        with count_comm() as counter:
            pred, prep, win = model.forward_tokens(**clip_inputs("motion", dtype=torch.float64))
            full_probe = probe(prep.layout.noisy, pred.shape[2], torch.float64)
            (pred * full_probe[:, win.first_token:win.first_token + win.num_noisy]).sum().backward()
        out[ac] = dict(stats={k: (s.calls, s.bytes_sent) for k, s in counter.stats.items()},
                       grads={n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    return out


def test_activation_checkpointing_never_reruns_communication():
    for u, r in ((2, 1), (1, 2)):
        for res in run_ranks(ac_worker, 2, u, r, timeout_s=180):
            assert res[True]["stats"] == res[False]["stats"], (u, r, res[True]["stats"], res[False]["stats"])
            assert res[True]["grads"].keys() == res[False]["grads"].keys()
            for name, g in res[False]["grads"].items():
                assert torch.allclose(res[True]["grads"][name], g, rtol=1e-10, atol=1e-12), name


def held_worker(rank, world, ac):
    """For each rank of a 2-rank ring, AC on or off: is the whole prepared sequence still alive once the
    forward has returned (before backward)?"""
    import gc
    import weakref

    import torch.distributed as dist

    from s2vbench.parallel.context import apply_context_parallel
    from s2vbench.parallel.launch import join_fake_group
    from s2vbench.parallel.sequence_parallel import CPGroups

    alive = []
    for me in range(2):
        join_fake_group(2, me)
        model = tiny_model()
        apply_context_parallel(model, CPGroups(ulysses=None, ring=dist.group.WORLD, ulysses_size=1, ring_size=2))
        model.activation_checkpointing = ac
        whole = []
        prepare = model.prepare
        model.prepare = lambda *a, **k: whole.append(prepare(*a, **k)) or whole[-1]
        out, _, _ = model.forward_tokens(**clip_inputs("first-uneven"))  # rank 1's window is padded
        ref = weakref.ref(whole.pop().tokens)
        gc.collect()
        alive.append(ref() is not None)
        out.sum().backward()
    return alive


def test_a_rank_keeps_only_its_window_of_the_sequence_for_backward():
    # the blocks' inputs (and activation checkpointing's) are this rank's window, not a view of the whole
    # sequence: its [S, dim] tokens are freed once the forward is done, on every rank, padded or not
    for ac in (False, True):
        assert run_ranks(held_worker, 1, ac, timeout_s=120)[0] == [False, False], f"ac={ac}"
