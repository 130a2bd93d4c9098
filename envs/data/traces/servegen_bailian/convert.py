"""Offline tool: re-encode the ServeGen pool files compactly and check the round trip.

Not used at run time. It made the shipped files of this folder from the joined ServeGen
files (``<pool>_rates.csv.gz`` and ``<pool>_lengths.csv.gz``, see SOURCE.md):

    python convert.py SOURCE_DIR OUT_DIR      # writes <pool>_rates.csv.xz, <pool>_pmfs.csv.xz
    python convert.py --check SOURCE_DIR DIR  # proves DIR expands back to SOURCE_DIR's bytes

Rates: the same CSV bytes, recompressed with xz. Lengths: one line per PMF
``client_id,window_start_s,field,values,weights`` with space-separated values and weights.
Weights are integer counts ``c`` when ``repr(c / sum(c))`` reproduces every upstream
probability string exactly; otherwise they are the upstream probability strings.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import lzma
import sys
from collections.abc import Iterator
from pathlib import Path

POOLS = ("language_m-large", "language_m-mid", "language_m-small", "multimodal_mm-image")
LONG_HEADER = "client_id,window_start_s,field,value,prob"
PMF_HEADER = "client_id,window_start_s,field,values,weights"
MAX_SMALLEST_COUNT = 400  # how far to search for the count behind the smallest probability


def counts_for(probs: list[str]) -> list[int] | None:
    """Integer counts whose normalised values print exactly as ``probs``, or None."""
    values = [float(p) for p in probs]
    smallest = min(values)
    for k in range(1, MAX_SMALLEST_COUNT + 1):
        total = round(k / smallest)
        if total <= 0:
            continue
        counts = [round(v * total) for v in values]
        if sum(counts) == total and all(
            c > 0 and repr(c / total) == text for c, text in zip(counts, probs, strict=True)
        ):
            return counts
    return None


def read_groups(path: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """``(key, values, probs)`` per PMF, in file order; key = ``client,window,field``."""
    with gzip.open(path, "rt", newline="") as handle:
        header = handle.readline().rstrip("\n")
        if header != LONG_HEADER:
            sys.exit(f"{path}: unexpected header {header!r}")
        key, values, probs = None, [], []
        for line in handle:
            client, window, field, value, prob = line.rstrip("\n").split(",")
            this = f"{client},{window},{field}"
            if this != key and key is not None:
                yield key, values, probs
                values, probs = [], []
            key = this
            values.append(value)
            probs.append(prob)
        if key is not None:
            yield key, values, probs


def encode_pmfs(source: Path) -> tuple[str, int, int]:
    lines = [PMF_HEADER]
    raw = 0
    for key, values, probs in read_groups(source):
        counts = counts_for(probs)
        raw += counts is None
        weights = probs if counts is None else [str(c) for c in counts]
        lines.append(f"{key},{' '.join(values)},{' '.join(weights)}")
    return "\n".join(lines) + "\n", len(lines) - 1, raw


def expand_pmfs(text: str) -> str:
    """The upstream long CSV that a PMF file stands for."""
    lines = text.splitlines()
    out = [LONG_HEADER]
    for line in lines[1:]:
        client, window, field, values, weights = line.split(",")
        vs, ws = values.split(" "), weights.split(" ")
        if ws[0].isdigit():
            total = sum(int(w) for w in ws)
            ws = [repr(int(w) / total) for w in ws]
        out.extend(f"{client},{window},{field},{v},{w}" for v, w in zip(vs, ws, strict=True))
    return "\n".join(out) + "\n"


def convert(source: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for pool in POOLS:
        rates = gzip.decompress((source / f"{pool}_rates.csv.gz").read_bytes())
        packed = lzma.compress(rates, preset=9 | lzma.PRESET_EXTREME)
        (out / f"{pool}_rates.csv.xz").write_bytes(packed)
        text, groups, raw = encode_pmfs(source / f"{pool}_lengths.csv.gz")
        data = lzma.compress(text.encode(), preset=9 | lzma.PRESET_EXTREME)
        (out / f"{pool}_pmfs.csv.xz").write_bytes(data)
        print(f"{pool}: {groups} PMFs, {raw} kept as probabilities")


def check(source: Path, shipped: Path) -> bool:
    ok = True
    for pool in POOLS:
        for kind, ours in (("rates", f"{pool}_rates.csv.xz"), ("lengths", f"{pool}_pmfs.csv.xz")):
            upstream = gzip.decompress((source / f"{pool}_{kind}.csv.gz").read_bytes())
            data = lzma.decompress((shipped / ours).read_bytes())
            if kind == "lengths":
                data = expand_pmfs(data.decode()).encode()
            same = data == upstream
            ok &= same
            digest = hashlib.sha256(upstream).hexdigest()
            print(f"{ours}: {'identical' if same else 'DIFFERENT'} to {pool}_{kind}.csv "
                  f"(sha256 of the expanded bytes {digest})")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="check instead of converting")
    parser.add_argument("source", type=Path, help="folder with the joined ServeGen files")
    parser.add_argument("target", type=Path, help="folder of the re-encoded files")
    args = parser.parse_args()
    if args.check:
        sys.exit(0 if check(args.source, args.target) else 1)
    convert(args.source, args.target)


if __name__ == "__main__":
    main()
