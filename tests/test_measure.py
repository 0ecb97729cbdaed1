"""The CPU's peak-memory tracker against hand-counted allocations."""

import torch

from s2vbench.bench.measure import TrackedMemory

KIB = 1024


def test_counts_allocations_until_freed_and_views_once():
    weights = torch.zeros(256)  # 1 KiB of existing state
    mem = TrackedMemory([weights, weights.view(16, 16)])
    assert mem.start == mem.current == mem.peak == KIB
    with mem.track():
        a = torch.ones(1024)  # 4 KiB
        view = a[:10].view(2, 5)  # no new storage
        b = a * 2  # 4 KiB more: 9 KiB live
        del a, view, b  # freed
        c = torch.ones(512)  # 2 KiB: 3 KiB live
        assert mem.current == 3 * KIB
    assert mem.peak == 9 * KIB
    del c
    assert mem.current == KIB  # still counting frees after the block


def test_an_inputs_storage_is_counted_when_first_touched():
    outside = torch.ones(1024)  # made before tracking, not declared existing
    mem = TrackedMemory()
    with mem.track():
        y = outside.sum()  # 4 B result, and the input's 4 KiB, seen now
    assert mem.peak == 4 * KIB + 4
    del y


def test_storage_resized_in_place_counts_at_its_current_size():
    # FSDP frees an unsharded parameter by resizing its storage to 0 and gathers into it again later
    buf = torch.ones(1024)
    mem = TrackedMemory([buf])
    with mem.track():
        buf.untyped_storage().resize_(0)  # freed, unseen by the dispatcher
        buf.untyped_storage().resize_(4 * KIB)
        buf.fill_(1.0)  # touched at 4 KiB again: the same storage, not a second one
        buf.untyped_storage().resize_(0)
        x = torch.ones(512)  # growth: the resized storage is recounted at 0 first
    assert mem.current == 2 * KIB and mem.peak == 4 * KIB
    del x


def test_a_training_step_peaks_at_state_plus_activations():
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 256, bias=False)  # 256 KiB of weight
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    x = torch.randn(64, 256)  # 64 KiB
    mem = TrackedMemory([lin.weight])
    with mem.track():
        opt.zero_grad(set_to_none=True)
        y = torch.relu(lin(x))  # y: 64 KiB, and relu's output is what backward keeps
        y.sum().backward()  # weight grad 256 KiB, plus the temporaries of backward
        opt.step()
    # at least weight + x + y + grad live together at the backward's end; the tracker adds only what aten made
    assert mem.peak >= (256 + 64 + 64 + 256) * KIB
    assert mem.peak <= (256 + 64 + 4 * 64 + 256) * KIB


def test_tracking_leaves_torch_compile_working():
    # a dispatch mode that does not ignore compile internals makes torch.compile run the code eagerly, under
    # the mode and after it
    runs = []

    def backend(gm, example_inputs):
        def run(*args):
            runs.append(1)
            return gm.forward(*args)
        return run

    f = torch.compile(lambda x: torch.sin(x) * 2, backend=backend)
    x = torch.randn(8)
    f(x)
    with TrackedMemory().track():
        f(x)
    f(x)
    assert len(runs) == 3


def test_fake_tensors_hold_no_memory():
    from torch._subclasses.fake_tensor import FakeTensorMode

    mem = TrackedMemory()
    with FakeTensorMode(), mem.track():
        torch.empty(1 << 20)
    assert mem.peak == 0
