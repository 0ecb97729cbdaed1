"""``s2vbench report RESULTS...``: a markdown report with tables and plots from results files."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from tabulate import tabulate

from .results import Record, ResultsError, atomic_write_text, check_output_folder, is_int, is_number, read_results

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
    the global batch; weak scaling lets it grow with the data-parallel degree)."""
    c = r.config
    batch = c.get("global_batch") if c.get("scaling", "strong") == "strong" else None
    return (c.get("preset"), c.get("ac"), c.get("dtype"), c.get("attention_backend"), c.get("scaling"), batch,
            c.get("compile", False), c.get("tokens"))


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
        fig.savefig(out / name, dpi=120)
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
            tag = "" if len(bases) == 1 else f" (ac={key[1]}, {key[2]})"
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


def write_report(results: list[Path], out: Path, title: str | None = None) -> Path:
    """Write ``out/report.md`` (and its PNGs) from the records of ``results``, ending with the calibration
    section a run saved in ``out`` (``CALIBRATION_SECTION``), if there is one."""
    out = Path(out)
    if out.exists() and not out.is_dir():  # before anything is read; the folder is made once the input is good
        check_output_folder(out)
    records: list[Record] = []
    seen: dict[Path, Path] = {}
    owner: dict[str, Path] = {}
    for p in map(Path, results):
        if p.resolve() in seen:  # every row would appear twice, silently
            raise ValueError(f"{p} is given twice (also as {seen[p.resolve()]}); pass each results file once")
        seen[p.resolve()] = p
        recs = read_results(p)
        if not recs:
            raise ResultsError(f"{p} holds no records, so there is nothing to report; did its run finish a point?")
        for r in recs:
            if r.kind != "iteration":
                continue
            try:
                check_iteration(r)
            except ValueError as e:
                raise ResultsError(f"{p}: {e}") from None
            if r.name in owner:  # speed-ups are keyed by point name: two runs of one point would mix
                raise ResultsError(f"point {r.name!r} is in {owner[r.name]} and again in {p}; report each run on "
                                   f"its own")
            owner[r.name] = p
        records += recs
    if not owner:
        kinds = sorted({r.kind for r in records})
        raise ResultsError(f"{', '.join(map(str, results))} hold(s) no iteration records (only {', '.join(kinds)}), "
                           f"which are what the report tables; pass the results.json of `s2vbench run`, `scaling` or "
                           f"`gpu-run` (buckets and longform write their own report.md)")
    check_output_folder(out)
    plots = _plots(records, out)
    env = records[0].environment if records else {}
    bases, sp = speedups(records)
    lines = [f"# {title or 's2vbench report'}", "",
             (f"Made {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} from "
             f"{', '.join(str(p) for p in results)}."), "",
             (f"Device: **{env.get('device', '?')}** ({env.get('device_count', 0)} GPUs); CPU {env.get('cpu', '?')} "
             f"x {env.get('cpu_count', '?')}; torch {env.get('torch')}, triton {env.get('triton')}, CUDA "
             f"{env.get('cuda')}, driver {env.get('driver')}, deepspeed {env.get('deepspeed')}; git "
             f"{(env.get('git_commit') or '?')[:12]}{' (dirty)' if env.get('git_dirty') else ''}."), ""]
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
    lines += ["## Iteration time", "", tabulate(rows, headers=[
        "strategy", "ranks", "AC", "dtype", "step s", "min-max s", "speed-up", "efficiency", "samples/s/dev", "tokens/s/dev",
        "TFLOP/s/dev", "exposed comm", "peak RSS GiB", "tracked peak GiB", "saved act. GiB", "tags"], tablefmt="pipe", disable_numparse=True), ""]
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
    lines += [("MFU is not measured on CPU: there is no bf16 peak to divide by. GPU figures appear only when "
              "measured on a GPU."), ""]
    for p in plots:
        lines += [f"![{p[:-4]}]({p})", ""]
    section = out / CALIBRATION_SECTION
    if section.is_file():
        lines.append(section.read_text(encoding="utf-8"))
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


__all__ = ["CALIBRATION_SECTION", "check_iteration", "speedups", "write_report"]
