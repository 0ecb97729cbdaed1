"""The 14b preset shards on the meta device at world size 8 without any rank holding the full model."""

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import json, resource, torch, torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from s2vbench.model import WanS2V, get_preset
    from s2vbench.parallel.parallelize import apply_fsdp
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("fake", store=FakeStore(), rank=3, world_size=8)
    cfg = get_preset("14b").model
    with torch.device("meta"):
        model = WanS2V(cfg)
    full = {n: tuple(p.shape) for n, p in model.named_parameters()}
    apply_fsdp(model, init_device_mesh("cpu", (8,)))
    local = {n: tuple(p.to_local().shape) for n, p in model.named_parameters()}
    model.to_empty(device="cpu")  # each rank allocates its shards only
    held = sum(p.to_local().numel() for p in model.parameters())
    print(json.dumps(dict(full=full, local=local, held=held,
                          peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)))
''')


def test_14b_shards_at_world_8_on_the_meta_device():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    total = sum(_numel(s) for s in res["full"].values())
    assert total == 16_295_755_609
    held = 0
    for name, shape in res["full"].items():
        rows = -(-shape[0] // 8)  # FSDP2 splits dim 0 into chunks of ceil(dim0 / 8) rows; rank 3 has the 4th
        want = [max(0, min(rows, shape[0] - 3 * rows)), *shape[1:]]
        assert res["local"][name] == want, (name, shape, res["local"][name])
        held += _numel(want)
    assert res["held"] == held
    assert abs(held - total / 8) < 0.001 * total  # one eighth of the model, never the whole
    # The shards are allocated (not touched): far from the 61 GiB a full float32 copy would take.
    assert res["peak_rss_gib"] < 2.0, res["peak_rss_gib"]


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n
