"""ncu_summary.py LABEL CSV [LABEL CSV ...] — one line per kernel from Nsight Compute's
`--csv --page details` output (scripts/gpu-check.sh's ncu step: one CSV per benchmark row, ours
and PyTorch's): where the row's time goes and what bounds each kernel. Columns: time, share of
the row, SM and memory throughput (% of the peak the section reports), DRAM throughput, achieved
occupancy, registers per thread, grid x block, the kernel's name (shortened). Where the profile has
the warp-state and scheduler sections, a second line per kernel: cycles per issued instruction,
the share of cycles with a warp eligible to issue, and Nsight Compute's stall note (what the warps
wait on most).
A CSV that is missing or has no kernel prints one line saying so."""
import csv
import re
import sys

WANT = {
    "Duration": "dur",
    "Compute (SM) Throughput": "sm",
    "Memory Throughput": "mem",
    "DRAM Throughput": "dram",
    "Achieved Occupancy": "occ",
    "Registers Per Thread": "regs",
    "Warp Cycles Per Issued Instruction": "cpi",
    "One or More Eligible": "elig",
}
TO_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6, "s": 1e6}


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def short(name, width=90):
    """the kernel's name without its argument list and namespaces, templates kept short"""
    name = re.sub(r"\(anonymous namespace\)::|_GLOBAL__N__[0-9a-f_]+::", "", name.strip())
    name = re.sub(r"\(.*$", "", name)
    name = re.sub(r"^void ", "", name)
    return name if len(name) <= width else name[: width - 3] + "..."


def kernels(path):
    """[(id, name, grid, block, {metric: value})] in launch order"""
    rows = {}
    order = []
    with open(path, newline="", errors="replace") as f:
        lines = [ln for ln in f if ln.startswith('"')]   # ncu prints other lines before the table
    for rec in csv.DictReader(lines):
        if "Metric Name" not in rec or "ID" not in rec:
            continue
        kid = rec["ID"]
        if kid not in rows:
            rows[kid] = (kid, rec.get("Kernel Name", "?"), rec.get("Grid Size", "?"), rec.get("Block Size", "?"), {})
            order.append(kid)
        desc = rec.get("Rule Description") or ""
        if (rec.get("Rule Name") == "CPIStall" or "being stalled" in desc) and desc and "stall" not in rows[kid][4]:
            rows[kid][4]["stall"] = " ".join(desc.split())
        key = WANT.get(rec["Metric Name"] or "")
        val = number(rec.get("Metric Value", ""))
        if key is None or val is None:
            continue
        if key == "dur":
            val *= TO_US.get(rec.get("Metric Unit", "").strip(), float("nan"))
        rows[kid][4][key] = val
    return [rows[k] for k in order]


def main(argv):
    if len(argv) < 3 or len(argv) % 2 == 0:
        print(__doc__.strip().splitlines()[0])
        return 2
    print(f"{'row':<34} {'us':>8} {'%row':>5} {'SM%':>5} {'mem%':>5} {'dram%':>5} {'occ%':>5} {'regs':>4}  grid x block  kernel")
    for label, path in zip(argv[1::2], argv[2::2]):
        try:
            ks = kernels(path)
        except OSError as e:
            print(f"{label:<34} no profile: {e.strerror}")
            continue
        if not ks:
            print(f"{label:<34} no kernel profiled ({path})")
            continue
        total = sum(m.get("dur", 0.0) for _, _, _, _, m in ks)
        for kid, name, grid, block, m in ks:
            g = lambda k, fmt: format(m[k], fmt) if k in m else "-"
            share = 100 * m["dur"] / total if total > 0 and "dur" in m else float("nan")
            print(f"{label:<34} {g('dur', '8.1f'):>8} {share:5.0f} {g('sm', '5.1f'):>5} {g('mem', '5.1f'):>5} "
                  f"{g('dram', '5.1f'):>5} {g('occ', '5.1f'):>5} {g('regs', '4.0f'):>4}  {grid}x{block}  {short(name)}")
            if "cpi" in m or "elig" in m or "stall" in m:
                note = m.get("stall", "")
                print(f"{label:<34}   cycles/issue {g('cpi', '.1f')}, eligible {g('elig', '.0f')}%"
                      f"{'; ' + (note if len(note) <= 220 else note[:217] + '...') if note else ''}")
        print(f"{label:<34} {total:8.1f} total over {len(ks)} kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
