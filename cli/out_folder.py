"""The one convention for output folders of every command that writes a report folder (``sample``,
``reconstruct``, ``evaluate``) or an output file (``fid --save-stats``):

- ``--out`` must be a folder that is, or can be created as, writable (checked before any work starts);
- an empty or new ``--out`` is used as is;
- an ``--out`` holding the outputs of an earlier run of the same command is refused unless ``--overwrite``;
  with ``--overwrite`` those earlier outputs (and only those, recognised by the names the command writes) are
  removed first, so the record file (``samples.json``, ``reconstruct.json``, ``metrics.json``) always
  describes every file in the folder and no stale grid stays next to new ones;
- ``evaluate --compare`` writes a comparison folder (``metrics.json`` with ``mode: compare``, ``compare*``,
  ``base/`` and ``finetuned/`` reports): the same command's outputs, so either kind of report replaces the other
  with ``--overwrite``;
- an ``--out`` holding anything else (your photos, another command's outputs) is always refused: nothing of
  yours is ever replaced or deleted.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from cascadekit.cli.params import out_folder_problem
from cascadekit.codec.errors import OutputError
from cascadekit.codec.fsio import describe_os_error

LEFTOVERS = (".*.tmp", "*.tmp", "*.tmp.png")  # temporary files of a write cut off by a kill


@dataclass(frozen=True)
class OutputKind:
    """What one command writes into its ``--out``: the record file and the name patterns of its outputs
    (``sub/pattern`` for files in a subfolder it creates)."""

    command: str
    record: str
    patterns: tuple[str, ...]

    def owns(self, relative: str) -> bool:
        """Whether a file at ``relative`` (posix path inside --out) is one this command writes."""
        name = relative.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(relative, p) for p in (self.record, *self.patterns)) or any(
            fnmatch.fnmatchcase(name, p) for p in LEFTOVERS)


SAMPLE = OutputKind("sample", "samples.json", ("image_*.png", "grid.png"))
RECONSTRUCT = OutputKind("reconstruct", "reconstruct.json", ("[0-9][0-9][0-9]*_recon.png", "grid.png"))
_REPORT = ("per_image.csv", "index.html", "fid_stats_original.npz", "fid_stats_reconstruction.npz", "grids/*.png",
           "plots/*.png", "worst/*.png")  # one evaluation's files next to its metrics.json
#: the decoder folders of ``evaluate --compare`` (each a full report; cli/stage_b_options.py labels them so)
COMPARE_DECODERS = ("base", "finetuned")
_COMPARISON = ("compare.json", "compare_per_image.csv", "compare_grids/*.png") + tuple(
    f"{d}/{p}" for d in COMPARE_DECODERS for p in ("metrics.json", *_REPORT))  # metrics.compare's files
#: ``evaluate`` writes one report, or with ``--compare`` the comparison around two reports
EVALUATE = OutputKind("evaluate", "metrics.json", _REPORT + _COMPARISON)


def claim_out_folder(out: str | Path, kind: OutputKind, overwrite: bool, flag: str = "--out") -> Path:
    """Check ``out`` before any work and, with ``overwrite``, remove the earlier run's outputs (see module doc):
    :func:`check_out_folder` then :func:`remove_outputs`."""
    remove_outputs(Path(out), check_out_folder(out, kind, overwrite, flag), kind)
    return Path(out)


def check_out_folder(out: str | Path, kind: OutputKind, overwrite: bool, flag: str = "--out") -> list[Path]:
    """The files of an earlier run of ``kind`` in ``out`` (to remove with :func:`remove_outputs` when work
    starts); nothing is changed here.

    Raises OutputError naming ``flag``: unwritable / a file / read-only; foreign files in it; an earlier run's
    outputs without ``overwrite``."""
    out = Path(out)
    problem = out_folder_problem(out)
    if problem:
        raise OutputError(f"{flag} {out}: {problem}")
    if not out.exists():
        return []
    ours, foreign = _classify(out, kind)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputError(f"{flag} {out} is not empty and holds files that are not outputs of `cascadekit "
                          f"{kind.command}` ({shown}); choose a new or empty folder (nothing was changed)")
    if ours and not overwrite:
        raise OutputError(f"{flag} {out} holds the outputs of an earlier `cascadekit {kind.command}` run "
                          f"({len(ours)} files, record {kind.record}); pass --overwrite to replace them, or choose "
                          f"another folder")
    return ours


def claim_out_file(path: str | Path, overwrite: bool, flag: str) -> Path:
    """An output file ``path``: its folder must be writable, no folder may stand there, and an existing file is
    replaced only with ``overwrite`` (OutputError naming ``flag`` otherwise)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file name such as {path / 'stats.npz'}")
    problem = out_folder_problem(path.parent)
    if problem:
        raise OutputError(f"{flag} {path}: {problem}")
    if path.exists() and not path.is_file():
        raise OutputError(f"{flag} {path} exists and is not a regular file; choose another file name")
    if path.exists() and not overwrite:
        raise OutputError(f"{flag} {path} exists; pass --overwrite to replace it, or choose another file name")
    return path


def _classify(out: Path, kind: OutputKind) -> tuple[list[Path], list[str]]:
    """(files of this command in ``out``, names of everything else), the subfolders of its patterns (at any
    depth, e.g. ``base/grids``) looked into; a symlink is never followed."""
    subfolders = {p.rsplit("/", k)[0] for p in kind.patterns for k in range(1, p.count("/") + 1)}
    ours, foreign = [], []
    pending = [out]
    while pending:
        for entry in sorted(pending.pop().iterdir()):
            rel = entry.relative_to(out).as_posix()
            if entry.is_dir() and not entry.is_symlink() and rel in subfolders:
                pending.append(entry)
            elif entry.is_file() and kind.owns(rel):
                ours.append(entry)
            else:
                foreign.append(rel)
    return ours, sorted(foreign)


def remove_outputs(out: Path, files: list[Path], kind: OutputKind) -> None:
    """Delete ``files`` (from :func:`check_out_folder`), the record last (an interrupted removal is then still
    recognised as an earlier run), then the subfolders they leave empty."""
    try:
        for p in sorted(files, key=lambda p: p.name == kind.record):
            p.unlink()
        folders = {d for p in files for d in p.parents if d != out and out in d.parents}
        for d in sorted(folders, key=lambda d: len(d.parts), reverse=True):  # base/grids before base
            if not any(d.iterdir()):
                d.rmdir()
    except OSError as e:
        raise OutputError(describe_os_error(e, e.filename or out)) from None
