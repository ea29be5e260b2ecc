"""The top frames of a py-spy profile, by own and by total share of the samples, as ``top`` would list them.

    python benchmarks/profile_top.py PROFILE.raw [--lines 25]

PROFILE.raw is py-spy's ``--format raw`` output (one collapsed stack and its sample count a line), e.g. from
``benchmarks/generator_cost.py --profile DIR`` (py-spy comes with the ``bench`` extra). A frame's own share is
the samples in which it is the innermost frame (for a C call, the Python function that made it: a system
call shows as its caller); its total share the samples in which it is anywhere on the stack, once per sample.
py-spy leaves out the samples in which the process waits (idle), so the shares are of the CPU it used; but a
thread of gevent's thread pool waiting for work looks busy to it, so stacks of the pool's threads are left out.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")
_POOL_THREAD = "_WorkerGreenlet.run (gevent/threadpool.py)"
"""A thread of gevent's thread pool (DNS, file I/O): its wait for work is a lock's timed wait, not CPU."""
_PREFIXES = re.compile(r"\(\S*?(site-packages/|lib/python3\.\d+/|xmpp_user/|benchmarks/)")


def frame_name(frame: str) -> str:
    """'run (/x/site-packages/gevent/hub.py:647)' -> 'run (gevent/hub.py)': functions, not lines."""
    return _PREFIXES.sub(lambda m: "(" + (m.group(1) if m.group(1) in ("xmpp_user/", "benchmarks/") else ""),
                         _LINE.sub(")", frame))  # fmt: skip


def top(lines: list[str]) -> tuple[int, Counter, Counter]:
    """Samples in all, and each frame's own and total sample counts."""
    own: Counter = Counter()
    total: Counter = Counter()
    samples = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";")]
        if _POOL_THREAD in frames:
            continue
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    return samples, own, total


def report(path: Path, lines: int = 25) -> str:
    samples, own, total = top(path.read_text().splitlines())
    if not samples:
        return f"{path}: no samples"
    out = [f"{path.name}: {samples} samples", "  own %  function (file)"]
    out += [f"  {100 * c / samples:5.1f}  {f}" for f, c in own.most_common(lines)]
    out += ["  total %  function (file)"]
    out += [f"  {100 * c / samples:5.1f}  {f}" for f, c in total.most_common(lines)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path, help="py-spy --format raw output")
    parser.add_argument("--lines", type=int, default=25, help="frames listed by own and by total share")
    args = parser.parse_args()
    if not args.profile.is_file():
        parser.error(f"no such file: {args.profile}")
    print(report(args.profile, args.lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
