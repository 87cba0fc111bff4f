"""Link the image's packages from existing site-packages folders into one folder (the device simulation).

    python image_env.py --packages image_packages.txt --to /tmp/sim/image SITE_PACKAGES [SITE_PACKAGES ...]

For every distribution installed in a source folder (the first folder wins a name) whose name is in the
package list, its top-level entries and its .dist-info are linked into ``--to``; everything else (zarr,
diffusers, the editable cascadekit, ...) is left out, as on the device. A top-level folder shared with a
distribution not in the list (``google/``, ``nvidia/``) is made a real folder holding links to the listed
distributions' entries only. ``nvidia-*`` CUDA wheels count as listed (the image has its own CUDA libraries).
The dependencies of linked distributions are linked too (this machine's versions may need packages that the
image's versions do not, e.g. a newer huggingface-hub's httpx2); they are printed, as such.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(path: Path) -> set[str]:
    return {norm(ln.strip()) for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")}


def dist_entries(dist_info: Path) -> list[tuple[str, ...]]:
    """Paths (as parts) a distribution installed, from its RECORD, limited to two levels below site-packages."""
    record = dist_info / "RECORD"
    if not record.exists():
        return [(dist_info.name,)]
    out = set()
    for line in record.read_text().splitlines():
        rel = line.rsplit(",", 2)[0]
        parts = Path(rel).parts
        if not parts or parts[0] == ".." or rel.endswith(".pth") or parts[0] == "__pycache__":
            continue
        out.add(parts[:2] if len(parts) > 1 else parts)
    return sorted(out)


def requirements(dist_info: Path) -> set[str]:
    """Names a distribution requires outside its extras (markers otherwise ignored: linking more is harmless)."""
    meta = dist_info / "METADATA"
    lines = meta.read_text(errors="replace").splitlines() if meta.exists() else []
    reqs = (ln.removeprefix("Requires-Dist:").strip() for ln in lines if ln.startswith("Requires-Dist:"))
    return {norm(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r).group()) for r in reqs if "extra ==" not in r}


def installed(sources: list[Path]) -> tuple[dict, dict]:
    """({distribution: (site, entries, dist-info)} first folder wins, {top-level entry: distributions})."""
    dists: dict[str, tuple[Path, list, Path]] = {}
    owners: dict[str, set[str]] = {}
    for site in sources:
        for info in sorted(site.glob("*.dist-info")):
            dist = norm(info.name.removesuffix(".dist-info").rsplit("-", 1)[0])
            entries = dist_entries(info)
            for e in entries:
                owners.setdefault(e[0], set()).add(dist)
            dists.setdefault(dist, (site, entries, info))
    return dists, owners


def build(sources: list[Path], names: set[str], dest: Path) -> tuple[list[str], list[str]]:
    """Link each listed distribution's files (and those of its dependencies) from ``sources`` into ``dest``;
    returns (the listed names linked, the dependencies linked beyond the list)."""
    dists, owners = installed(sources)
    names = names | {d for d in dists if d.startswith("nvidia-")}
    todo = [d for d in dists if d in names]
    chosen: dict[str, tuple[Path, list]] = {}
    while todo:
        d = todo.pop()
        if d in dists and d not in chosen:
            chosen[d] = dists[d][:2]
            todo += requirements(dists[d][2])
    dest.mkdir(parents=True, exist_ok=True)
    for dist, (site, entries) in chosen.items():
        for e in entries:
            shared = any(o not in chosen for o in owners[e[0]]) and len(e) > 1
            target, link = (site.joinpath(*e), dest.joinpath(*e)) if shared else (site / e[0], dest / e[0])
            link.parent.mkdir(parents=True, exist_ok=True)
            if not os.path.lexists(link) and target.exists():
                link.symlink_to(target)
    return sorted(d for d in chosen if d in names), sorted(d for d in chosen if d not in names)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--packages", type=Path, required=True)
    p.add_argument("--to", type=Path, required=True)
    p.add_argument("sources", type=Path, nargs="+")
    args = p.parse_args(argv)
    done, deps = build([p.resolve() for p in args.sources], listed(args.packages), args.to)
    print(f"image_env: linked {len(done)} listed distributions into {args.to}, and what they need here: "
          f"{', '.join(deps) or 'nothing more'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
