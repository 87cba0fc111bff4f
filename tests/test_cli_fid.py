"""`cascadekit fid`: folder vs folder, saved statistics, and the usage error."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
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


def test_fid_two_folders_with_save_stats_saves_a_and_identical_folders_give_zero(backbone_dir, tmp_path):  # noqa: F811
    a, b = _folder(tmp_path / "a", 0), _folder(tmp_path / "b", 1)
    run = CliRunner().invoke
    stats = tmp_path / "a.npz"
    r = run(main, ["fid", str(a), str(b), "--save-stats", str(stats), "--weights-dir", str(backbone_dir)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["fid"] > 0  # stdout stays one JSON line; the "saved" note goes to stderr
    r_saved = run(main, ["fid", str(stats), str(b), "--weights-dir", str(backbone_dir)])
    assert json.loads(r_saved.stdout)["fid"] == pytest.approx(json.loads(r.stdout)["fid"], rel=1e-9)
    r = run(main, ["fid", str(a), str(b), "--save-stats", str(stats), "--weights-dir", str(backbone_dir)])
    assert r.exit_code == 2 and "--overwrite" in r.output  # an existing statistics file is not replaced silently
    r = run(main, ["fid", str(a), str(a), "--weights-dir", str(backbone_dir)])
    assert r.exit_code == 0 and 0.0 <= json.loads(r.stdout)["fid"] < 1e-6  # clamped: never a tiny negative


def test_fid_user_errors_are_one_line(backbone_dir, tmp_path):  # noqa: F811
    one = _folder(tmp_path / "one", 0, n=1)
    b = _folder(tmp_path / "b", 1)
    r = CliRunner().invoke(main, ["fid", str(one), str(b), "--weights-dir", str(backbone_dir)])
    assert r.exit_code == 2 and r.output.count("error:") == 1 and "at least 2" in r.output and "one" in r.output
    r = CliRunner().invoke(main, ["fid", str(one), str(b), "--weights-dir", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "--weights-dir" in r.output
