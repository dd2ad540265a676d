"""The Markdown report of the static model (every figure labelled as a static prediction)."""

from __future__ import annotations

from typing import Any

from .report import LABEL

# "issue" (total instruction issue) is shown as "issue-slots": a bare issue share reads like a tracker reference.
_BINDS = {"issue": "issue-slots"}


def _head(w, header: str) -> None:
    """A table's header row and its separator, one ``---`` per column."""
    w(header)
    w("|" + "---|" * (header.count("|") - 1))


def _m(x: float) -> str:
    return f"{x / 1e6:,.2f}"


def _count(x: float) -> str:
    return f"{x / 1e6:,.2f} M" if x >= 1e5 else f"{x:,.0f}"


def _k(x: float) -> str:
    return f"{x:,.0f}"


def markdown(data: dict[str, Any]) -> str:
    meta = data["meta"]
    out: list[str] = []
    w = out.append
    w(f"# Static performance model of the fused kernels: Triton {meta['triton']}, {meta['arch']}")
    w("")
    w(
        f"**Every figure in this report is {LABEL}**: SASS compiled on a CPU-only machine with the ptxas / "
        f"nvdisasm of the Triton wheel, counted statically. Source of every figure: this model "
        f"(`python -m bench.sass_report{' --triton ' + meta['triton'] if meta.get('side_env') else ''}`), "
        f"torch {meta['torch']}, date {meta['date']}; runtime {meta['runtime_s']:.0f} s on "
        f"{meta['host_cores']} cores ({meta['specialisations']} distinct specialisations, compile phase "
        f"{meta['compile_s']:.0f} s; with an empty Triton cache the compile phase takes ~10-14 min on 2 cores)."
    )
    w("")
    w("## Method")
    w("")
    w(
        "1. Launches: `bench/aot_check.train_step_launches` runs the real launchers of one training step "
        "(forward with batch statistics, training backward, KL loss of both heads, reduction 'sum', fp32 logits) "
        "on meta tensors; layer tables from `soundnet_fast.model`. Torch ops beside them (zero fills, partial "
        "sums, BN finalisation, running-statistics update) are counted by a dispatch mode."
    )
    w(
        "2. Specialisation: Triton's own run-time binder (`create_function_from_signature` + "
        "`JITFunction._pack_args`, the path `JITFunction.run` takes): 'D' on integers divisible by 16 and on "
        "16-byte-aligned pointers, integers equal to 1 become constexprs; default `num_stages`."
    )
    w(
        "3. Compile for sm_90a; registers / stack from `cuobjdump -res-usage`, shared memory from the kernel "
        "metadata; SASS from `nvdisasm -c -gi -hex` (inlined line info; the encodings' control bits give each "
        "instruction's stall count and scoreboards)."
    )
    w(
        "4. CFG of the SASS, natural loops from back-edges; each SASS loop is mapped to its source `for` by "
        "the line info of its closing branch and its trip count is the `range()` evaluated on the launch "
        "arguments (through the inlining chain; `tl.program_id` per program). Blocks count once per "
        "iteration of every loop around them; code skipped by a forward branch is counted as issued "
        "(upper bound); predicated-off instructions count as issued."
    )
    w(
        "5. Per launch: warp-instructions by pipe, MMA by kind, bytes per memory space (32 lanes x width), "
        "occupancy, waves; time = max(issue, each pipe, tensor, L2, DRAM, latency, dependency) + launch cost; "
        "the step is the sum over launches (no overlap: a pessimistic bound) plus the torch ops. `dependency` "
        "(bench/sass/stalls.py): one warp's own cycles (stall counts plus the part of a load's latency the "
        "instructions after it do not cover), with the warps a scheduler holds queueing for their issue slot and "
        "the pipes (mean value analysis); checked against the H200's measured kernel times by "
        "`python -m bench.sass.validate` (bench/results/sass_validate-h200-2026-11-30.json)."
    )
    w(
        "   `bound` (JSON, H200) is one of issue | int | tensor | L2 | DRAM | latency | dependency: int = the "
        "integer ALU or IMAD pipe, issue = total issue or another pipe (fp32, MIO, XU); `detail.bound_H200` "
        "names the pipe."
    )
    w(
        "6. Invariants: dynamic MMA FLOPs == FLOPs of the `tl.dot` shapes padded to the blocks x the times the "
        "source calls them (an independent formula per kernel); modelled L2 bytes >= compulsory bytes "
        "(every tensor the kernel touches, once)."
    )
    w("")
    w("### Constants")
    w("")
    _head(w, "| constant | value | source |")
    for d, dev in meta["constants"]["devices"].items():
        w(
            f"| {d} | {dev['sms']} SMs, {dev['clock_hz'] / 1e9:.2f} GHz, HBM {dev['dram_bps'] / 1e12:.2f} TB/s, "
            f"L2 {dev['l2_bps'] / 1e12:.1f} TB/s, wgmma bf16 {dev['wgmma_bf16_flops'] / 1e12:.0f} TFLOP/s, "
            f"HMMA x{dev['hmma_fraction']} | datasheet; L2 and HMMA fraction: ASSUMPTION |"
        )
    rates = meta["constants"]["issue_rates_warp_inst_per_clk_per_scheduler"]
    w(
        f"| issue rates (warp-inst / clk / scheduler) | {', '.join(f'{k} {v}' for k, v in rates.items())} | "
        f"{meta['constants']['sources']['issue_rates']} |"
    )
    for k, v in meta["constants"]["assumptions"].items():
        w(f"| {k} | {v['value']} | {v['note']} |")
    w("")
    w(
        "Pipes: fp32 = FADD/FMUL/FFMA/HFMA2; imad = IMAD* (FMA-heavy, shares the FMA pipe with fp32); alu = "
        "integer add/logic/shift/compare/select, FSEL/FSETP/FMNMX, VIADD, I2FP, F2FP (ASSUMPTION for the "
        "last three); xu = MUFU and F2F/F2I/I2F; mio = LDG/STG/LDS/STS/LDSM/LDGSTS/LDL/STL/SHFL/LDC/S2R/atomics; "
        "uniform = U* instructions; control = branches, barriers, NOPs, `@!PT` padding (issue slot only)."
    )
    w("")
    _headline(data, w)
    _layers(data, w)
    _regs(data, w)
    _narrow(data, w)
    _launch_table(data, w)
    _calibration(data, w)
    _cross(data, w)
    _hand(data, w)
    _baselines(data, w)
    _det(data, w)
    _invariants(data, w)
    w("## Not modelled")
    w("")
    w("- The heads' convs (cuDNN), autocast casts, gradient accumulation, the optimizer and the data path.")
    w(
        "- Instruction latencies other than global loads (dependent ALU chains), bank conflicts, L1 hit rates, "
        "sector efficiency of strided gathers (bytes are requested bytes), tail effects inside a wave, "
        "clock throttling, overlap between consecutive launches."
    )
    w("- Division slow paths reached only by CALL (not taken in the model).")
    w("")
    return "\n".join(out)


def _cfg_name(c: dict) -> str:
    return f"{c['arch']} b{c['batch']} {c['seconds']:g}s {c['dtype']}"


def _headline(data: dict, w) -> None:
    w(f"## Headline ({LABEL})")
    w("")
    w(
        "Clips/s per GPU: fused = batch / (sum over launches of (max bound + 3 us) + sum over torch ops of max(3 us, "
        "bytes / HBM bandwidth)); "
        "eager / compile = HBM bytes-bound only (bf16, see Baselines), same shapes."
    )
    w("")
    _head(
        w,
        "| config | warp-inst / clip (M) | fused H100 | fused H200 | binds (H200, time share) | eager H200 | "
        "compile H200 | spills (launches with stack > 0) |",
    )
    for c in data["configs"]:
        pc = c["per_clip"]
        bt = pc["binding_time_us"]["H200"]
        tot = sum(bt.values())
        binds = ", ".join(f"{_BINDS.get(k, k)} {v / tot:.0%}" for k, v in sorted(bt.items(), key=lambda kv: -kv[1])[:3])
        base = data["baselines"].get(f"{c['arch']}-{c['seconds']:g}s", {})
        e = base.get("eager", {}).get("predicted_clips_per_s", {}).get("H200", float("nan"))
        m = base.get("compile", {}).get("predicted_clips_per_s", {}).get("H200", float("nan"))
        spill = sum(1 for r in c["launches"] if r["spill_bytes"] > 0)
        w(
            f"| {_cfg_name(c)} | {_m(pc['warp_instructions'])} | {_k(c['predicted_clips_per_s']['H100'])} | "
            f"{_k(c['predicted_clips_per_s']['H200'])} | {binds} | {_k(e)} | {_k(m)} | {spill} / "
            f"{len(c['launches'])} |"
        )
    dram = sum(1 for c in data["configs"] for r in c["launches"] if "DRAM" in r["detail"]["bound_H100"])
    l1 = [r for c in data["configs"] for r in c["launches"]
          if r["detail"]["l1_us_info"] > r["predicted_us"]["H200"] - 3.0]  # fmt: skip
    w("")
    w(
        f"L1 / shared-memory bandwidth (128 B/clk/SM, informational, not in the max) would exceed the binding "
        f"bound in {len(l1)} of {sum(len(c['launches']) for c in data['configs'])} launches"
        + (": " + ", ".join(sorted({f"{r['layer']} {r['kernel']}" for r in l1})) if l1 else "")
        + "."
    )
    if not dram:
        w("")
        w(
            "HBM binds no fused launch, even on the H100: the H100 and H200 predictions coincide (the model's "
            "two GPUs differ only in HBM bandwidth)."
        )
    w("")
    tops = {}
    for c in data["configs"]:
        bt = c["per_clip"]["binding_time_us"]["H200"]
        tops[_cfg_name(c)] = max(bt, key=lambda k: bt[k])
    issue = [k for k, v in tops.items() if v.startswith("pipe:") or v in ("issue", "dependency")]
    other = [f"{k} ({v})" for k, v in tops.items() if k not in issue]
    w(
        f"Largest share of the predicted time: instruction issue (few warps per scheduler, each waiting on its "
        f"own dependencies, over a stream dominated by the integer pipes: address and index arithmetic of the "
        f"im2col gathers, `m // T`, `r % K`, masks) in {len(issue)} of {len(tops)} "
        "configurations" + (f"; {', '.join(other)} otherwise" if other else "") + ". Tensor cores and HBM are "
        "far from binding: the fused kernels move a fraction of the HBM bytes of eager or compile, yet are "
        "predicted slower than those bytes bounds until that arithmetic leaves the inner loops."
    )
    w("")


def _layers(data: dict, w) -> None:
    w(f"## Per layer, per clip ({LABEL})")
    w("")
    w(
        "Warp-instructions (millions) and time (us, sum over the layer's launches of max bound + 3 us launch "
        "cost, divided by the batch) per clip; MMA by kind in the last column."
    )
    w("")
    for c in data["configs"]:
        if c["batch"] != 64:
            continue
        b = c["batch"]
        w(f"**{_cfg_name(c)}**")
        w("")
        _head(
            w,
            "| layer | fwd M inst | bwd M inst | fwd us H100 / H200 | bwd us H100 / H200 | bound (H200, by time) | "
            "MMA / clip |",
        )
        layers: dict[str, list] = {}
        for r in c["launches"]:
            layers.setdefault(r["layer"], []).append(r)
        for layer, rs in layers.items():

            def tot(phase, key, rs=rs, b=b):
                return sum(key(r) for r in rs if r["phase"] == phase) / b

            bounds: dict[str, float] = {}
            mma: dict[str, float] = {}
            for r in rs:
                k = r["detail"]["bound_H200"]
                bounds[k] = bounds.get(k, 0.0) + r["detail"]["bounds_us"][k]
                for kind, n in r["mma"]["instructions"].items():
                    mma[kind] = mma.get(kind, 0.0) + n / b
            top = max(bounds, key=lambda k: bounds[k])
            us = {(ph, d): tot(ph, lambda r, d=d: r["predicted_us"][d]) for ph in ("forward", "backward")
                  for d in ("H100", "H200")}  # fmt: skip
            mma_s = ", ".join(f"{_count(n)} {k}" for k, n in mma.items()) or "-"
            w(
                f"| {layer} | {_m(tot('forward', lambda r: r['warp_instructions']))} | "
                f"{_m(tot('backward', lambda r: r['warp_instructions']))} | "
                f"{us['forward', 'H100']:.2f} / {us['forward', 'H200']:.2f} | "
                f"{us['backward', 'H100']:.2f} / {us['backward', 'H200']:.2f} | {top} | {mma_s} |"
            )
        pc = c["per_clip"]
        w(
            f"| **step** | | | | | | torch ops: {pc['launches']['torch']} per step, "
            f"{pc.get('torch_ops_bytes', 0) / 1e6:.0f} MB/clip, {_torch_us(pc, b):.2f} us/clip (H200); "
            f"L1 MB/clip {pc.get('bytes_l1', 0) / 1e6:.0f} |"
        )
        w("")


def _torch_us(pc: dict, batch: int) -> float:
    """Per-clip H200 time of the torch ops beside the kernels (older reports: 3 us each)."""
    return pc["torch_ops_us"]["H200"] if "torch_ops_us" in pc else pc["launches"]["torch"] * 3 / batch


def _pair_launches(bf16: list[dict], fp32: list[dict]) -> list[tuple[dict | None, dict | None]]:
    """The two precisions' launches side by side, matched by (layer, phase, kernel, n-th such launch): fp32
    runs kernels bf16 does not (the BN sums' recompute), so matching by position would pair different kernels.
    Launches of one precision only get None for the other; order: bf16's, each fp32-only one after its layer's."""

    def key(rows: list[dict]) -> list[tuple]:
        seen: dict[tuple, int] = {}
        out = []
        for r in rows:
            k = (r["layer"], r["phase"], r["kernel"])
            seen[k] = seen.get(k, 0) + 1
            out.append((*k, seen[k]))
        return out

    fkeys = key(fp32)
    by_key = dict(zip(fkeys, fp32, strict=True))
    pairs: list[tuple[dict | None, dict | None]] = []
    for r, k in zip(bf16, key(bf16), strict=True):
        pairs.append((r, by_key.pop(k, None)))
    for k, f in zip(fkeys, fp32, strict=True):  # fp32-only launches: after the last row of their layer
        if k in by_key:
            at = max((i for i, (b, g) in enumerate(pairs) if (b or g)["layer"] == f["layer"]), default=len(pairs) - 1)
            pairs.insert(at + 1, (None, f))
    return pairs


def _regs(data: dict, w) -> None:
    w(f"## Registers, stack (spill) bytes, shared memory per launch (ptxas via cuobjdump; {LABEL} for CTAs)")
    w("")
    w("num_warps 4 everywhere. CTAs/SM = resident CTAs on an H100/H200 and the limiting resource.")
    w("")
    for arch in ("soundnet8", "soundnet5"):
        w(f"**{arch}, batch 64** (bf16 | fp32)")
        w("")
        _head(
            w,
            "| layer | phase | kernel | bf16 regs | bf16 stack B | bf16 smem KB | bf16 CTAs/SM | fp32 regs | "
            "fp32 stack B | fp32 smem KB |",
        )
        cb = next((c for c in data["configs"] if c["arch"] == arch and c["batch"] == 64 and c["dtype"] == "bf16"),
                  None)  # fmt: skip
        cf = next((c for c in data["configs"] if c["arch"] == arch and c["batch"] == 64 and c["dtype"] == "fp32"),
                  None)  # fmt: skip
        if cb is None:
            continue
        for r, f in _pair_launches(cb["launches"], cf["launches"] if cf else []):
            fr = f"{f['regs']} | {f['spill_bytes']} | {f['smem_bytes'] / 1024:.1f}" if f else "- | - | -"
            br = (
                (
                    f"{r['regs']} | {r['spill_bytes']} | {r['smem_bytes'] / 1024:.1f} | "
                    f"{r['detail']['resident_ctas']} ({r['detail']['occupancy_limit']})"
                )
                if r
                else "- | - | - | -"
            )
            x = r or f
            w(f"| {x['layer']} | {x['phase']} | {x['kernel']} | {br} | {fr} |")
        w("")


def _narrow(data: dict, w) -> None:
    """Global loads narrower than 16 bytes per lane inside loops, per launch of the bf16 batch-64 configs."""
    w(f"## Global loads narrower than 16 bytes inside loops ({LABEL})")
    w("")
    w(
        "Per loop of each bf16 batch-64 launch: the global-load instructions of its own blocks (nested loops "
        "listed apart) whose per-lane width is under 16 bytes, by opcode (LDG.E = 4 bytes, .64 = 8, .U16 / "
        ".U8 = 2 / 1; an LDGSTS is a cp.async). From the SASS, counted once per loop body."
    )
    w("")
    for c in data["configs"]:
        if not (c["batch"] == 64 and c["dtype"] == "bf16"):
            continue
        rows = []
        for r in c["launches"]:
            for lp in r["detail"].get("loops", []):
                if lp.get("narrow_loads"):
                    ops = ", ".join(f"{n} {op}" for op, n in sorted(lp["narrow_loads"].items()))
                    rows.append(f"| {r['layer']} | {r['phase']} | {r['kernel']} | {lp['source']} | {ops} |")
        launches = {tuple(x.split(" | ")[:3]) for x in rows}
        w(f"**{_cfg_name(c)}**: {len(launches)} of {len(c['launches'])} launches have narrow global loads in a loop.")
        w("")
        if rows:
            _head(w, "| layer | phase | kernel | loop | narrow loads in its body |")
            for x in rows:
                w(x)
            w("")


def _launch_table(data: dict, w) -> None:
    for c in data["configs"]:
        if not (c["batch"] == 64 and c["dtype"] == "bf16"):
            continue
        b = c["batch"]
        w(f"## Per launch, {_cfg_name(c)} ({LABEL})")
        w("")
        w(
            "Per clip = per launch / batch. inst/thr = instructions per thread per program. Bound = binding "
            "resource on the H200 (pipe:alu / pipe:imad = integer pipes)."
        )
        w("")
        _head(
            w,
            "| layer | phase | kernel | grid | waves | warp-inst/clip (M) | inst/thr | MMA GFLOP/clip | L2 MB/clip | "
            "local MB/clip | DRAM MB/clip | H100 us | H200 us | bound |",
        )
        for r in c["launches"]:
            d = r["detail"]
            w(
                f"| {r['layer']} | {r['phase']} | {r['kernel']} | {'x'.join(map(str, r['grid']))} | {d['waves']} | "
                f"{_m(r['warp_instructions'] / b)} | {_k(d['per_thread_per_program'])} | "
                f"{r['flops'] / b / 1e9:.3f} | {r['bytes_l2'] / b / 1e6:.2f} | {d['bytes_local'] / b / 1e6:.2f} | "
                f"{r['bytes_dram'] / b / 1e6:.2f} | {r['predicted_us']['H100']:,.1f} | "
                f"{r['predicted_us']['H200']:,.1f} | {d['bound_H200']} |"
            )
        pc = c["per_clip"]
        w(
            f"| **total** | | | | | {_m(pc['warp_instructions'])} | | {pc['flops_mma'] / 1e9:.3f} | "
            f"{pc['bytes_l2'] / 1e6:.2f} | {pc['bytes_local'] / 1e6:.2f} | {pc['bytes_dram'] / 1e6:.2f} | "
            f"{pc['predicted_us']['H100'] * b:,.0f} | {pc['predicted_us']['H200'] * b:,.0f} | step, incl. "
            f"{pc['launches']['torch']} torch ops |"
        )
        w("")


def _calibration(data: dict, w) -> None:
    cal = data.get("calibration")
    if not cal:
        return
    w(f"## Against the earlier static review ({LABEL})")
    w("")
    _head(w, "| figure | review | this model |")
    for row in cal["rows"]:
        w(f"| {row[0]} | {row[1]} | {row[2]} |")
    w("")
    for note in cal.get("notes", []):
        w(f"- {note}")
    w("")


def _cross(data: dict, w) -> None:
    x = data.get("cross_version")
    if not x:
        return
    a, b = x["versions"]
    w(f"## Triton versions: {a} beside {b}, soundnet8 b64 20 s bf16 ({LABEL})")
    w("")
    w(
        f"Same launches, same model; {b} from its own report of the same date. Inner step = instructions per "
        "thread in the innermost loop's body."
    )
    w("")
    _head(w, f"| layer | phase | kernel | M warp-inst/clip {a} / {b} | regs | stack B | inner step |")
    for r in x["rows"]:
        wi, rg, sp, st = r["warp_instructions_per_clip"], r["regs"], r["spill_bytes"], r["inner_step_instructions"]
        w(
            f"| {r['layer']} | {r['phase']} | {r['kernel']} | {wi[0] / 1e6:.2f} / {wi[1] / 1e6:.2f} | "
            f"{rg[0]} / {rg[1]} | {sp[0]} / {sp[1]} | {st[0]:,} / {st[1]:,} |"
        )
    w("")


def _hand(data: dict, w) -> None:
    h = data.get("hand_count")
    if not h:
        return
    w(f"## Hand count: conv1 bf16 `_band_stats_kernel`, soundnet8 b64 ({LABEL})")
    w("")
    w(
        "Counted from the SASS text alone, without the CFG / loop / trip-count code: instruction lines before "
        "the outer loop's label (prologue), from that label to the backward branch that closes it (one row tile; "
        "the kernel has no inner loop), and from there to the last EXIT (epilogue). The same count by shell:"
    )
    w("")
    lab = h["label"]
    instr = "/\\*[0-9a-f]+\\*/ "
    w("```")
    w(f"nvdisasm -c -gi stats.cubin > s.sass   # or --dump-sass: .cache/sass/triton-<version>/{h.get('sass', '')}")
    w("grep -nE '^\\.L_x_[0-9]+:|BRA|EXIT' s.sass   # the outer loop's label, the back-edges, the EXITs")
    w(f"I='{instr}'")
    w(f"awk -v I=\"$I\" '/^\\{lab}:/{{exit}} $0 ~ I {{n++}} END{{print n}}' s.sass                       # prologue")
    w(f"awk -v I=\"$I\" '/^\\{lab}:/{{f=1}} f && $0 ~ I {{n++}} /BRA `\\(\\{lab}\\)/{{print n; exit}}' s.sass  # tile")
    w(
        f"awk -v I=\"$I\" '/BRA `\\(\\{lab}\\)/{{f=1; next}} f && $0 ~ I {{n++}} f && / EXIT ;/{{e=n}} END{{print e}}' "
        "s.sass  # epilogue"
    )
    w("```")
    w("")
    w(
        f"{h['programs']:,} programs x (prologue {h['prologue']} + epilogue {h['epilogue']}) + {h['tiles']:,} "
        f"tiles x tile {h['tile']} = {h['per_thread_per_program'] * h['programs']:,.0f} instructions per thread "
        f"in all; x 4 warps / 64 clips = **{_m(h['per_clip'])} M warp-instructions per clip**; the model: "
        f"{_m(h['model_per_clip'])} M ({h['agreement']:+.2%})."
    )
    w("")


def _baselines(data: dict, w) -> None:
    w(f"## Baselines: eager bf16 and torch.compile, bytes-bound ({LABEL})")
    w("")
    w(
        "Bytes per clip each would move through HBM (formulas in `bench/sass/analytic.py`: eager = conv, BN "
        "(2 reads + 1 write), ReLU, max-pool with int64 indices, and their backwards, each through HBM; compile "
        "= cuDNN conv + one fused statistics pass + one fused normalise/ReLU/pool pass, two fused backward "
        "passes, cuDNN dW / dX). Clips/s = HBM bandwidth / bytes (launch costs and the FLOP bound at 790 "
        "TFLOP/s shown beside). Fused = DRAM compulsory bytes of this model."
    )
    w("")
    _head(w, "| arch | layer | eager MB/clip | compile MB/clip | fused MB/clip (b64 bf16) |")
    for key, b in data["baselines"].items():
        fused = next((c for c in data["configs"] if f"{c['arch']}-{c['seconds']:g}s" == key and c["batch"] == 64
                      and c["dtype"] == "bf16"), None)  # fmt: skip
        per_layer: dict[str, float] = {}
        if fused:
            for r in fused["launches"]:
                per_layer[r["layer"]] = per_layer.get(r["layer"], 0.0) + r["bytes_dram"] / fused["batch"]
        for layer, v in b["eager"]["bytes_by_layer"].items():
            w(
                f"| {b['arch']} | {layer} | {v / 1e6:.2f} | {b['compile']['bytes_by_layer'][layer] / 1e6:.2f} | "
                f"{per_layer.get(layer, 0.0) / 1e6:.2f} |"
            )
        fz = sum(per_layer.values())
        w(
            f"| {b['arch']} | **total** | {b['eager']['bytes_per_clip'] / 1e6:.1f} | "
            f"{b['compile']['bytes_per_clip'] / 1e6:.1f} | {fz / 1e6:.1f} |"
        )
    w("")
    _head(w, "| arch | eager clips/s H100 / H200 | compile clips/s H100 / H200 | conv FLOP bound (790 TFLOP/s) |")
    for b in data["baselines"].values():
        e, m = b["eager"]["predicted_clips_per_s"], b["compile"]["predicted_clips_per_s"]
        w(
            f"| {b['arch']} | {_k(e['H100'])} / {_k(e['H200'])} | {_k(m['H100'])} / {_k(m['H200'])} | "
            f"{_k(b['eager']['flop_bound_clips_per_s']['H200'])} |"
        )
    w("")


def _det(data: dict, w) -> None:
    if not data.get("deterministic"):
        return
    w(f"## Deterministic backward (no atomics) ({LABEL})")
    w("")
    _head(w, "| config | warp-inst / clip (M) | clips/s H100 | clips/s H200 | invariants |")
    for c in data["deterministic"]:
        w(
            f"| {_cfg_name(c)} | {_m(c['per_clip']['warp_instructions'])} | "
            f"{_k(c['predicted_clips_per_s']['H100'])} | {_k(c['predicted_clips_per_s']['H200'])} | "
            f"{c['invariants']['status']} |"
        )
    w("")


def _invariants(data: dict, w) -> None:
    w("## Invariants")
    w("")
    allc = data["configs"] + data.get("deterministic", [])
    bad = [(c, f) for c in allc for f in c["invariants"]["failures"]]
    n = sum(len(c["launches"]) for c in data["configs"])
    if not bad:
        w(
            f"PASS: in all {len(allc)} configurations ({n} launches in the main ones), dynamic MMA FLOPs equal "
            "the padded analytic FLOPs and modelled L2 bytes are at least the compulsory bytes."
        )
    else:
        w("**FAIL**:")
        w("")
        for c, f in bad:
            w(f"- {_cfg_name(c)}: {f}")
    w("")
