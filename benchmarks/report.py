"""Write one benchmark's section into BENCHMARKS.md, keeping the other sections."""
from __future__ import annotations

import fcntl
import platform
import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def write_section(key: str, title: str, body: str) -> None:
    """Replace (or append) one section of BENCHMARKS.md; two benchmarks side by side take turns."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n## {title}\n\n{body.strip()}\n{end}"
    with open(BENCHMARKS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\nEvery figure here is written by a script in benchmarks/; rerun it to check.\n"
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
        text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
        BENCHMARKS.write_text(text)


def markdown_table(header: list[str], rows: list[dict]) -> list[str]:
    """The lines of a Markdown table: one column per header key, a missing value left empty."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(r.get(h, "")) for h in header) + " |" for r in rows]


def cpu_line() -> str:
    """Which CPU a figure came from: its model name and its bf16 units (undiffuse.precision reads the
    same flags), since bf16 is several times faster than fp32 on some machines and slower on others."""
    from undiffuse.precision import CPU_UNITS, cpu_bf16_units

    name = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                    name)
        family = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("cpu family")),
                      None)
        model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model\t")), None)
        if family and model:
            name += f" (family {family}, model {model})"
    except OSError:
        pass
    units = cpu_bf16_units()
    if units is None:
        return f"{name}, bf16 units unknown"
    missing = [u for u in CPU_UNITS[:2] if u not in units]
    return (f"{name}, bf16 units: {', '.join(units) or 'none'}"
            + (f" (no {', '.join(missing)})" if units and missing else ""))
