"""`cascadekit fid`: folder vs folder, saved statistics, and the usage error."""
import json
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from metrics_weights import backbone_dir  # noqa: E402,F401  (fixture)

from cascadekit.cli.main import main  # noqa: E402


def _folder(path: Path, seed: int, n: int = 3) -> Path:
    path.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path / f"{i}.png")
    return path


def test_fid_folders_and_saved_stats(backbone_dir, tmp_path):  # noqa: F811
    a, b = _folder(tmp_path / "a", 0), _folder(tmp_path / "b", 1)
    (a / "broken.png").write_bytes(b"not a png")
    run = CliRunner().invoke
    stats = tmp_path / "a.npz"
    r = run(main, ["fid", str(a), "--save-stats", str(stats), "--weights-dir", str(backbone_dir)])
    assert r.exit_code == 0, r.output
    assert stats.is_file() and "broken.png" in r.output  # unreadable file listed, not fatal
    r_same = run(main, ["fid", str(a), str(stats), "--weights-dir", str(backbone_dir)])
    r_diff = run(main, ["fid", str(b), str(stats), "--weights-dir", str(backbone_dir)])
    assert r_same.exit_code == 0 and r_diff.exit_code == 0, (r_same.output, r_diff.output)
    same = json.loads(r_same.stdout)["fid"]
    diff = json.loads(r_diff.stdout)["fid"]
    assert abs(same) < 1e-3 and diff > same + 1e-3


def test_fid_needs_b_or_save_stats(tmp_path):
    a = _folder(tmp_path / "a", 0, n=2)
    r = CliRunner().invoke(main, ["fid", str(a)])
    assert r.exit_code != 0 and "--save-stats" in r.output
