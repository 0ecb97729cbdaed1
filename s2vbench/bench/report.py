"""``s2vbench report RESULTS...``: a markdown report with tables and plots from results files."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from tabulate import tabulate

from .results import (Record, ResultsError, atomic_save_figure, atomic_write_text, check_output_folder, is_int,
                      is_number, read_results)

CALIBRATION_SECTION = "calibration.md"
"""The performance model's calibration and validation section, as ``s2vbench run`` saves it in its folder
(beside ``calibration.json`` and ``validation.json``): ``write_report`` ends a report written into that folder
with it, so a report regenerated there keeps what the run measured instead of dropping it."""


def machine(env: dict) -> str:
    """The machine a record was measured on, as ``compare`` matches points: its GPU, CPU model and core count."""
    from .compare import hardware

    device = env.get("device")
    return hardware(env.get("cpu"), env.get("cpu_count"), accelerator=device if device != "cpu" else None)


def _value(rec: Record, name: str):
    try:
        return rec.metric(name).value
    except KeyError:
        return None


def _fmt(x, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def _comm_time(r: Record, kind: str, bytes_metric) -> tuple[float | None, str]:
    """(s per step, where it came from) of one collective kind of a record, old records included."""
    try:
        m = r.metric(f"collective_time_{kind}")
    except KeyError:  # results from before per-kind times: FSDP's read 0 but were never measured
        if kind.startswith(("fsdp_", "hsdp_")):
            return None, "n/a"
        return bytes_metric.stats.get("seconds"), "wall"
    return m.value, ("profiler" if m.how.startswith("s per step, max over ranks: torch.profiler") else
                     "wall" if m.value is not None else "n/a")


def strategy_label(config: dict) -> str:
    """The strategy as the report names it: HSDP's replica groups appended (``fsdp x2 HSDP``)."""
    rep = config.get("dp_replicate", 1)
    return config.get("strategy", "?") + (f" x{rep} HSDP" if rep > 1 else "")


def timed(records: list[Record]) -> list[Record]:
    return [r for r in records if r.kind == "iteration" and _value(r, "step_time") is not None]


def group_key(r: Record) -> tuple:
    """Points that differ only in rank count and strategy compare with each other (strong scaling also keeps
    the global batch; weak scaling lets it grow with the data-parallel degree), on one machine: a speed-up
    against another machine's baseline would be the machines' difference."""
    c = r.config
    batch = c.get("global_batch") if c.get("scaling", "strong") == "strong" else None
    return (c.get("preset"), c.get("ac"), c.get("dtype"), c.get("attention_backend"), c.get("scaling"), batch,
            c.get("compile", False), c.get("tokens"), machine(r.environment))


def check_iteration(r: Record) -> None:
    """What the report reads of an iteration record: its rank count, a step time (positive where measured) and,
    where timed, the exposed communication; a ValueError naming the record otherwise, not a crash mid-report."""
    world = r.config.get("world")
    if not is_int(world) or world < 1:
        raise ValueError(f"iteration record {r.name!r} has config.world = {world!r}, not a positive rank count; "
                         f"the report reads the records that `s2vbench run` and `scaling` write")
    try:
        step = r.metric("step_time").value
    except KeyError:
        raise ValueError(f"iteration record {r.name!r} has no step_time metric") from None
    if step is not None and (not is_number(step) or not 0 < step < float("inf")):
        raise ValueError(f"iteration record {r.name!r} has step_time {step!r}, not a positive number of seconds")
    if step is not None and not any(m.name == "exposed_comm" for m in r.metrics):
        raise ValueError(f"iteration record {r.name!r} is timed but has no exposed_comm metric")


def speedups(records: list[Record]) -> tuple[dict[tuple, Record], dict[str, tuple[float, float]]]:
    """Per comparison group, the baseline (the fastest point at the smallest rank count that ran), and per
    point its (speed-up, efficiency) against its group's baseline."""
    ran = timed(records)
    for r in ran:
        check_iteration(r)
    bases: dict[tuple, Record] = {}
    for key in {group_key(r) for r in ran}:
        group = [r for r in ran if group_key(r) == key]
        smallest = min(r.config["world"] for r in group)
        bases[key] = min((r for r in group if r.config["world"] == smallest), key=lambda r: _value(r, "step_time"))
    out = {}
    for r in ran:
        base = bases[group_key(r)]
        s = _value(base, "step_time") / _value(r, "step_time")
        out[r.name] = (s, s / (r.config["world"] / base.config["world"]))
    return bases, out


def _plots(records: list[Record], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        atomic_save_figure(fig, out / name, dpi=120)
        plt.close(fig)
        made.append(name)

    ran = timed(records)
    bases, sp = speedups(records)
    if ran:
        fig, ax = plt.subplots(figsize=(6, 4))
        worlds = sorted({r.config["world"] for r in ran})
        w0 = min(worlds)
        ax.plot(worlds, [w / w0 for w in worlds], "k--", label="ideal")
        for key, base in sorted(bases.items(), key=lambda kv: str(kv[0])):
            several = len({k[-1] for k in bases}) > 1
            tag = "" if len(bases) == 1 else f" (ac={key[1]}, {key[2]}{', ' + key[-1] if several else ''})"
            group = [r for r in ran if group_key(r) == key]
            for strategy in sorted({strategy_label(r.config) for r in group}):
                pts = sorted((r.config["world"], sp[r.name][0]) for r in group if strategy_label(r.config) == strategy)
                if pts[0][0] != base.config["world"]:  # every curve starts at its group's baseline
                    pts.insert(0, (base.config["world"], 1.0))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=strategy + tag)
        ax.set_xlabel("ranks")
        ax.set_ylabel("speed-up vs the smallest rank count that ran")
        ax.set_xticks(worlds)
        ax.legend()
        ax.set_title("Training-step speed-up")
        save(fig, "speedup.png")

        fig, ax = plt.subplots(figsize=(7, 4))
        labels = [f"{strategy_label(r.config)}\nw{r.config['world']}{' ac' if r.config.get('ac') else ''}" for r in ran]
        share = [r.metric("exposed_comm").stats.get("share", 0.0) * 100 for r in ran]
        ax.bar(labels, share, color="tab:red")
        ax.set_ylabel("exposed communication, % of step")
        ax.set_title("Exposed communication (step - compute-only)")
        save(fig, "exposed_comm.png")

        fig, ax = plt.subplots(figsize=(7, 4))
        for i, r in enumerate(ran):
            st = r.metric("step_time").stats
            ys = [v for k, v in st.items() if k.startswith("step")]
            ax.scatter([i] * len(ys), ys, alpha=0.7)
            ax.hlines(_value(r, "step_time"), i - 0.3, i + 0.3, color="k")
        ax.set_xticks(range(len(ran)), labels)
        ax.set_ylabel("step time, s (bar: median)")
        ax.set_title("Per-step time (warm-up excluded)")
        save(fig, "step_times.png")

    its = [r for r in records if r.kind == "iteration" and "failed" not in r.tags and "oom" not in r.tags]
    if its:
        fig, ax = plt.subplots(figsize=(8, 4))
        labels = [f"{strategy_label(r.config)}\nw{r.config['world']}{' ac' if r.config.get('ac') else ''}" for r in its]
        parts = [("peak_rss", "peak RSS (measured)"), ("tracked_peak_memory", "peak tensor storage (tracked)"),
                 ("saved_activations", "saved activations (measured)"),
                 ("analytic_params", "params (analytic)"), ("analytic_optimizer", "AdamW state (analytic)")]
        width = 0.8 / len(parts)
        for j, (name, label) in enumerate(parts):
            ax.bar([i + j * width for i in range(len(its))], [_value(r, name) or 0.0 for r in its], width,
                   label=label)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(its))], labels)
        ax.set_ylabel("GiB per rank")
        ax.set_title("Memory per rank by strategy")
        ax.legend(fontsize=8)
        save(fig, "memory.png")
    return made


KERNEL_KINDS = ("attention_correctness", "attention_kernel", "ground", "causal_conv_kernel")
"""The records of ``gpu-run`` besides its model point's iteration, each with a table of its own."""

TORCH_ATTENTION = ("sdpa_cudnn", "sdpa_flash", "sdpa_math_cpu")
"""The torch providers a kernel's time is compared with, the first one measured on its shape and machine."""

_ELEMENT_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8}


def _is_ground(r: Record) -> bool:
    # before 2026-12-08 run_ground recorded a point that failed as kind iteration, named ground/...
    return r.kind == "ground" or r.name.startswith("ground/")


def _iterations(records: list[Record]) -> list[Record]:
    return [r for r in records if r.kind == "iteration" and not _is_ground(r)]


def _metric(r: Record, name: str):
    try:
        return r.metric(name)
    except KeyError:
        return None


def _reason(r: Record) -> str:
    """Why a record's first figure that was not measured is missing (needs CUDA, failed: ...)."""
    return next((m.how for m in r.metrics if m.status == "not_measured"), "")


def _attention_shape(shape: dict) -> str:
    n = shape.get("q_len")
    n = n if shape.get("kv_len") == n else f"{n}x{shape.get('kv_len')}"
    return f"{shape.get('name')} (B{shape.get('batch')} H{shape.get('heads')} N{n} D{shape.get('head_dim')})"


def attention_table(records: list[Record], tablefmt: str = "pipe") -> str:
    """Time and TFLOP/s of each attention provider and shape, and its speed against torch's (the first of
    ``TORCH_ATTENTION`` measured on the same shape, dtype and machine): gpu-run prints it, the report holds it."""
    recs = [r for r in records if r.kind == "attention_kernel"]

    def key(r):
        return machine(r.environment), r.config.get("shape", {}).get("name"), r.config.get("dtype")

    torch_times = {}
    for provider in reversed(TORCH_ATTENTION):  # the first in the list wins
        for r in recs:
            if r.config.get("provider") == provider and _value(r, "fwd_time") is not None:
                torch_times[key(r)] = (provider, _value(r, "fwd_time"), _value(r, "bwd_time"))
    rows = []
    for r in recs:
        base = torch_times.get(key(r))
        fwd, bwd = _value(r, "fwd_time"), _value(r, "bwd_time")
        vs = [f"{base[i] / t:.2f}x" if base and t and base[i] else "n/a" for i, t in ((1, fwd), (2, bwd))]
        rows.append((_attention_shape(r.config.get("shape", {})), r.config.get("provider"), r.config.get("dtype"),
                     _fmt(fwd, ".4g"), _fmt(_value(r, "fwd_tflops"), ".4g"), _fmt(bwd, ".4g"),
                     _fmt(_value(r, "bwd_tflops"), ".4g"), _fmt(_value(r, "fwd_bwd_tflops"), ".4g"), vs[0], vs[1],
                     base[0] if base else "",
                     "" if fwd is not None else f"not measured: {_reason(r)}"))
    return tabulate(rows, headers=["shape", "provider", "dtype", "fwd ms", "fwd TFLOP/s", "bwd ms", "bwd TFLOP/s",
                                   "fwd+bwd TFLOP/s", "fwd vs torch", "bwd vs torch", "torch", "note"],
                    tablefmt=tablefmt, disable_numparse=True)


def _correctness_lines(records: list[Record]) -> list[str]:
    recs = [r for r in records if r.kind == "attention_correctness"]
    if not recs:
        return []
    keys = ("out", "lse", "dq", "dk", "dv")
    rows = []
    for r in recs:
        passed = _metric(r, "passed")
        errors = []
        for k in keys:
            m = _metric(r, f"{k}_max_abs_err")
            if m is None or m.value is None:
                errors.append("")
                continue
            within = m.stats.get("within_2x_rule") == 1.0
            errors.append(f"{m.value:.2e} vs {_fmt(m.stats.get('torch_same_dtype'), '.2e')}"
                          + ("" if within else " **over 2x**"))
        verdict = ("not measured: " + passed.how if passed is None or passed.value is None else
                   "yes" if passed.value == 1.0 else "**NO**")
        rows.append((r.config.get("variant", r.name), r.config.get("n", ""),
                     str(r.config.get("dtype", "")).replace("torch.", ""), *errors,
                     verdict))
    return ["## Attention correctness", "",
            ("Max |error| of each output against a float64 reference, next to torch SDPA's own error in the same "
             "dtype (*ours vs torch*). A kernel passes when every error is within 2x torch's plus a 1e-6 floor (the "
             "2x rule) and none is NaN. lse: torch returns none, so its figure is the plain-torch reference in the "
             "same dtype, on the first 2048 rows."), "",
            tabulate(rows, headers=["variant", "N", "dtype", *(f"{k} max abs err" for k in keys), "passed"],
                     tablefmt="pipe", disable_numparse=True), ""]


def _conv_bytes(config: dict) -> float | None:
    """The bytes a causal conv cannot avoid: input, weight and bias read once, output written once."""
    shape, size = config.get("shape", {}), _ELEMENT_BYTES.get(str(config.get("dtype")).replace("torch.", ""))
    try:
        b, c_in, c_out, t, stride = (shape[k] for k in ("batch", "c_in", "c_out", "t", "stride"))
        t_out = -(-t // stride)
        return size * (b * c_in * t + c_out * c_in * 3 + c_out + b * t_out * c_out)
    except (KeyError, TypeError):  # a shape or dtype this report cannot size
        return None


def _conv_lines(records: list[Record]) -> list[str]:
    recs = [r for r in records if r.kind == "causal_conv_kernel"]
    if not recs:
        return []
    rows = []
    for r in recs:
        shape, nbytes = r.config.get("shape", {}), _conv_bytes(r.config)
        t_torch, t_ours = _value(r, "torch_time"), _value(r, "triton_time")

        def gbps(us):
            return _fmt(nbytes / (us * 1e-6) / 1e9, ".4g") if nbytes and us else "n/a"

        rows.append((f"{shape.get('name')} (B{shape.get('batch')} {shape.get('c_in')}->{shape.get('c_out')} "
                     f"T{shape.get('t')} stride {shape.get('stride')})",
                     str(r.config.get("dtype")).replace("torch.", ""),
                     _fmt(t_torch, ".1f"), _fmt(t_ours, ".1f"), _fmt(_value(r, "speedup_vs_torch"), ".2f"),
                     gbps(t_torch), gbps(t_ours), "" if t_ours is not None else f"not measured: {_reason(r)}"))
    return ["## Causal conv", "",
            ("The audio encoder's causal Conv1d fused with its LayerNorm and SiLU (Triton) against the torch eager "
             "sequence, forward, median time. GB/s: the bytes it cannot avoid (input, weight and bias read once, "
             "output written once) over the median time."), "",
            tabulate(rows, headers=["shape", "dtype", "torch us", "Triton us", "speed-up vs torch", "torch GB/s",
                                    "Triton GB/s", "note"], tablefmt="pipe", disable_numparse=True), ""]


def _ground_lines(records: list[Record]) -> list[str]:
    recs = [r for r in records if _is_ground(r)]
    if not recs:
        return []

    def cell(r, name, spec=".4g"):
        m = _metric(r, name)
        return "" if m is None else "not measured" if m.value is None else f"{format(m.value, spec)} ({m.status})"

    rows, missing, failed = [], set(), []
    for r in recs:
        if r.kind != "ground" or {"failed", "oom"} & set(r.tags):  # failure_record's, of either kind
            failed.append(f"- `{r.name}`: {r.metrics[0].how if r.metrics else r.notes}")
            continue
        missing |= {f"{m.name}: {m.how}" for m in r.metrics if m.status == "not_measured"}
        measured, model = _value(r, "rank0_compute_time"), _value(r, "model_compute_time")
        rows.append((f"{strategy_label(r.config)} w{r.config.get('world')}", r.notes.removeprefix("device "),
                     r.config.get("hardware_profile") or "none", cell(r, "rank0_compute_time"),
                     cell(r, "model_compute_time"), _fmt(measured / model, ".2f") if measured and model else "n/a",
                     cell(r, "grounded_14b_step_time"), cell(r, "model_14b_step_time"),
                     cell(r, "peak_allocated", ".2f")))
    lines = ["## The 8-GPU claim grounded on one GPU", "",
             ("Rank 0 of the job run for real under torch's fake process group (every collective a no-op), at the "
              "paper's per-rank shapes and reduced depth: its compute time is **measured**. Everything else is the "
              "performance model's, on the hardware profile named, and **predicted**: *grounded 14b* is the "
              "measured time x the model's 40-layer / reduced-depth compute ratio + the model's exposed "
              "communication. Each figure says which it is."), ""]
    if rows:
        lines += [tabulate(rows, headers=["point", "device", "profile", "rank-0 compute s", "model compute s",
                                          "measured / model", "grounded 14b step s", "model-only 14b step s",
                                          "peak allocated GiB"], tablefmt="pipe", disable_numparse=True), ""]
    if missing:
        lines += ["Not measured:", ""] + [f"- {m}" for m in sorted(missing)] + [""]
    if failed:
        lines += ["Points that did not run:", ""] + failed + [""]
    return lines


def _attention_lines(records: list[Record]) -> list[str]:
    if not any(r.kind == "attention_kernel" for r in records):
        return []
    return ["## Attention kernels", "",
            ("Median time per call and TFLOP/s (4 B H Nq Nk D FLOPs forward, 2.5x that backward). *vs torch*: "
             "torch's time over the provider's (above 1x: faster than torch), torch being the first of "
             f"{', '.join(TORCH_ATTENTION)} measured on the same shape, dtype and machine."), "",
            attention_table(records), ""]


def _gpu_model_lines(records: list[Record]) -> list[str]:
    """The model points' GPU figures (MFU, CUDA memory, NVML power), where any was measured."""
    names = ("mfu", "cuda_peak_allocated", "gpu_power")
    recs = [r for r in _iterations(records) if any(_value(r, n) is not None for n in names)]
    if not recs:
        return []
    rows = []
    for r in recs:
        mem, power = _metric(r, "cuda_peak_allocated"), _metric(r, "gpu_power")
        rows.append((r.name, _fmt(_value(r, "step_time")), _fmt(_value(r, "tflops_per_device"), ".1f"),
                     _fmt(_value(r, "mfu"), ".1%") if _value(r, "mfu") is not None else "n/a",
                     _fmt(mem.value if mem else None, ".2f"), _fmt(mem.stats.get("reserved") if mem else None, ".2f"),
                     _fmt(power.value if power else None, ".0f"),
                     _fmt(power.stats.get("max") if power and power.value is not None else None, ".0f"),
                     _fmt(power.stats.get("sm_util_mean") if power and power.value is not None else None, ".0f")))
    return ["## GPU figures of the model points", "",
            ("MFU: model TFLOP/s per device over the datasheet's dense bf16 peak. Memory: "
             "torch.cuda.max_memory_allocated (and reserved), max over ranks. Power and SM utilisation: NVML, "
             "mean over the timed steps (and max), max over ranks."), "",
            tabulate(rows, headers=["point", "step s", "TFLOP/s/dev", "MFU", "CUDA peak GiB", "reserved GiB",
                                    "power W", "max W", "SM util %"], tablefmt="pipe", disable_numparse=True), ""]


def _environment_lines(records: list[Record], files: dict[int, Path]) -> list[str]:
    """What the records ran on: one line where they share a machine and commit; else every machine and commit
    with its records and files, where the header used to give the first record's as every record's."""
    def commit(env: dict) -> str:
        return f"{(env.get('git_commit') or '?')[:12]}{' (dirty)' if env.get('git_dirty') else ''}"

    def versions(env: dict) -> str:
        return (f"torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}, driver "
                f"{env.get('driver')}, deepspeed {env.get('deepspeed')}")

    groups: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        groups.setdefault((machine(r.environment), commit(r.environment)), []).append(r)
    if len(groups) == 1:
        env = records[0].environment
        return [(f"Device: **{env.get('device', '?')}** ({env.get('device_count', 0)} GPUs); CPU "
                 f"{env.get('cpu', '?')} x {env.get('cpu_count', '?')}; {versions(env)}; git {commit(env)}."), ""]
    machines, commits = len({m for m, _ in groups}), len({c for _, c in groups})
    lines = [f"**These records come from more than one machine or commit** ({machines} machine(s), {commits} "
             f"commit(s)); each figure was measured on its own record's:", ""]
    for (where, at), recs in groups.items():
        env, paths = recs[0].environment, sorted({str(files[id(r)]) for r in recs})
        lines.append(f"- **{where}** ({env.get('device_count', 0)} GPUs), git {at}: {len(recs)} record(s) from "
                     f"{', '.join(paths)}; {versions(env)}")
    return lines + [""]


def write_report(results: list[Path], out: Path, title: str | None = None) -> Path:
    """Write ``out/report.md`` (and its PNGs) from the records of ``results``, ending with the calibration
    section a run saved in ``out`` (``CALIBRATION_SECTION``), if there is one."""
    out = Path(out)
    if out.exists() and not out.is_dir():  # before anything is read; the folder is made once the input is good
        check_output_folder(out)
    records: list[Record] = []
    files: dict[int, Path] = {}  # each record's file, by id
    seen: dict[Path, Path] = {}
    owner: dict[str, Path] = {}
    for p in map(Path, results):
        if p.resolve() in seen:  # every row would appear twice, silently
            raise ValueError(f"{p} is given twice (also as {seen[p.resolve()]}); pass each results file once")
        seen[p.resolve()] = p
        recs = read_results(p)
        if not recs:
            raise ResultsError(f"{p} holds no records, so there is nothing to report; did its run finish a point?")
        for r in _iterations(recs):
            try:
                check_iteration(r)
            except ValueError as e:
                raise ResultsError(f"{p}: {e}") from None
            if r.name in owner:  # speed-ups are keyed by point name: two runs of one point would mix
                raise ResultsError(f"point {r.name!r} is in {owner[r.name]} and again in {p}; report each run on "
                                   f"its own")
            owner[r.name] = p
        records += recs
        files.update((id(r), p) for r in recs)
    if not owner and not any(r.kind in KERNEL_KINDS or _is_ground(r) for r in records):
        kinds = sorted({r.kind for r in records})
        raise ResultsError(f"{', '.join(map(str, results))} hold(s) no iteration records (only {', '.join(kinds)}) "
                           f"nor {', '.join(KERNEL_KINDS)} ones, which are what the report tables; pass the "
                           f"results.json of `s2vbench run`, `scaling` or `gpu-run` (buckets and longform write their "
                           f"own report.md)")
    check_output_folder(out)
    kernel_lines = (_gpu_model_lines(records) + _correctness_lines(records) + _attention_lines(records)
                    + _ground_lines(records) + _conv_lines(records))
    environment = _environment_lines(records, files)
    records = _iterations(records)  # from here on, what the iteration tables and plots read
    plots = _plots(records, out)
    bases, sp = speedups(records)
    lines = [f"# {title or 's2vbench report'}", "",
             (f"Made {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} from "
             f"{', '.join(str(p) for p in results)}."), "", *environment]
    if bases:
        lines += ["Speed-up is relative to the smallest rank count that ran, within points that differ only in "
                  "rank count and strategy; the baselines are " +
                  ", ".join(f"**{b.name}** ({_fmt(_value(b, 'step_time'))} s/step)" for b in bases.values()) +
                  ". Step times: per step the slowest rank, median over the timed steps, warm-up excluded. On "
                  "CPU each rank is one single-threaded process.", ""]
    rows = []
    for r in [r for r in records if r.kind == "iteration"]:
        s, eff = sp.get(r.name, (None, None))
        st = r.metric("step_time")
        spread = f"{_fmt(st.stats.get('min'))}-{_fmt(st.stats.get('max'))}" if st.value is not None else ""
        exposed = r.metric("exposed_comm").stats.get("share") if _value(r, "exposed_comm") is not None else None
        rows.append((strategy_label(r.config), r.config.get("world"), "on" if r.config.get("ac") else "off",
                     r.config.get("dtype"), _fmt(st.value), spread, _fmt(s, ".2f"),
                     _fmt(eff, ".0%") if eff is not None else "n/a", _fmt(_value(r, "samples_per_s_per_device")),
                     _fmt(_value(r, "tokens_per_s_per_device"), ".0f"), _fmt(_value(r, "tflops_per_device"), ".4f"),
                     _fmt(exposed, ".0%") if exposed is not None else "n/a", _fmt(_value(r, "peak_rss")),
                     _fmt(_value(r, "tracked_peak_memory"), ".4f"), _fmt(_value(r, "saved_activations"), ".4f"),
                     ", ".join(r.tags)))
    if rows:
        lines += ["## Iteration time", "", tabulate(rows, headers=[
            "strategy", "ranks", "AC", "dtype", "step s", "min-max s", "speed-up", "efficiency", "samples/s/dev",
            "tokens/s/dev", "TFLOP/s/dev", "exposed comm", "peak RSS GiB", "tracked peak GiB", "saved act. GiB",
            "tags"], tablefmt="pipe", disable_numparse=True), ""]
    comm_rows = []
    for r in [r for r in records if r.kind == "iteration"]:
        for m in r.metrics:
            if m.name.startswith("comm_"):
                kind = m.name[5:]
                want = m.stats.get("analytic")
                secs, how = _comm_time(r, kind, m)
                comm_rows.append((strategy_label(r.config), r.config.get("world"), kind, f"{m.value:,.0f}",
                                  f"{want:,.0f}", "yes" if want == m.value else "NO", _fmt(secs, ".4f"), how))
    if comm_rows:
        lines += ["## Communication per step (bytes sent by the busiest rank)", "",
                  ("Time per kind, s per step, max over ranks. *profiler*: torch.profiler of the counted step, the "
                  "summed execution ranges of the kind's collectives (gloo runs them on a worker thread; NCCL: "
                  "kernel time); this is busy time, which includes waiting for the slowest peer and overlaps "
                  "compute (the time a step loses to communication is the exposed-communication column above). "
                  "*wall*: our counters' main-thread time (ring exchanges: post to end of wait, spanning the "
                  "attention computed meanwhile). *n/a*: not measured (results from before FSDP2's collectives "
                  "were timed: the dispatch mode that counts them sees their launch only)."), "",
                  tabulate(comm_rows, headers=["strategy", "ranks", "kind", "counted B", "analytic B", "equal",
                                               "time s", "time from"], tablefmt="pipe", disable_numparse=True), ""]
    compiled = [r for r in records if r.kind == "iteration" and r.config.get("compile")]
    if compiled:
        crow = []
        for r in compiled:
            try:
                m = r.metric("compile_time")
            except KeyError:
                continue
            crow.append((r.name, _fmt(m.value, ".1f"), m.stats.get("unique_graphs"), m.stats.get("graph_breaks"),
                         _fmt(_value(r, "step_time"))))
        lines += ["## torch.compile", "", ("Each block and audio-injector module is compiled on its own before "
                  "FSDP; compile time (dynamo + lazy backward compiles, max over ranks) falls in the warm-up "
                  "steps, which the step times exclude."), "",
                  tabulate(crow, headers=["point", "compile s", "graphs", "graph breaks", "step s"], tablefmt="pipe",
                           disable_numparse=True), ""]
    by_tokens = [r for r in records if r.kind == "iteration" and r.config.get("tokens_requested") is not None]
    if by_tokens:
        trow = [(r.name, r.config["tokens_requested"], r.config.get("tokens"),
                 _fmt(r.config["tokens"] / r.config["tokens_requested"] - 1, "+.1%")) for r in by_tokens]
        lines += ["## Clips given by token count", "", tabulate(trow, headers=["point", "requested", "actual",
                                                                                "difference"],
                                                                 tablefmt="pipe", disable_numparse=True), ""]
    not_timed = [r for r in records if r.kind == "iteration" and _value(r, "step_time") is None]
    if not_timed:
        lines += ["## Points without timings", ""]
        lines += [f"- `{r.name}`: {r.metric('step_time').how}" for r in not_timed] + [""]
    if records:
        lines += [("MFU is not measured on CPU: there is no bf16 peak to divide by. GPU figures appear only when "
                  "measured on a GPU."), ""]
    for p in plots:
        lines += [f"![{p[:-4]}]({p})", ""]
    lines += kernel_lines
    section = out / CALIBRATION_SECTION
    if section.is_file():
        lines.append(section.read_text(encoding="utf-8"))
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


__all__ = ["CALIBRATION_SECTION", "KERNEL_KINDS", "attention_table", "check_iteration", "machine", "speedups",
           "write_report"]
