"""Summarise py-spy ``--format raw`` profiles (collapsed stacks): where the samples go, per file.

Usage: .venv/bin/python bench/profile_summary.py DIR_OR_FILE... [--top N] [--focus TEXT]

For each profile: the share of samples per thread kind (event loop vs worker threads), the functions
with the most samples on top of the stack (self) and anywhere in the stack (inclusive, counted once per
sample).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "src/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def summarise(path: Path, top: int, focus: str | None) -> str:
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        if focus and not any(focus in f for f in frames):
            continue
        total += count
        threads["event loop (main thread)" if frames[0].startswith("<module>")
                else "anyio worker threads" if any(f.startswith("WorkerThread.run") for f in frames)
                else "other threads"] += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return f"== {path.name}: no samples"
    lines = [f"== {path.name}: {total} samples"]
    lines += [f"   {n / total:6.1%}  {name}" for name, n in threads.most_common(4)]
    lines.append("   -- self")
    lines += [f"   {n / total:6.1%}  {name}" for name, n in self_counts.most_common(top)]
    lines.append("   -- inclusive")
    lines += [f"   {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top * 2)]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--focus", help="only stacks with a frame containing this text")
    args = p.parse_args()
    files = [f for p_ in args.paths for f in (sorted(p_.glob("*.txt")) if p_.is_dir() else [p_])]
    for f in files:
        print(summarise(f, args.top, args.focus))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
