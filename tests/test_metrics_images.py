"""The metrics package's own safe image reading: modes, EXIF, bomb guard, unreadable files, folder keys."""
import numpy as np
import pytest
import torch
from PIL import Image

from cascadekit.metrics.errors import MetricInputError
from cascadekit.metrics.images import iter_folder, pil_to_tensor, read_image, tensor_to_rgb


def test_modes_are_converted_to_rgb_with_a_note(tmp_path):
    gray = Image.fromarray(np.full((4, 5), 100, np.uint8), "L")
    gray.save(tmp_path / "g.png")
    img, note = read_image(tmp_path / "g.png")
    assert img.mode == "RGB" and np.asarray(img)[0, 0].tolist() == [100, 100, 100] and "L" in note

    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent -> white
    rgba[0, 0, 3] = 255  # one opaque red pixel
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img, note = read_image(tmp_path / "a.png")
    a = np.asarray(img)
    assert a[0, 0].tolist() == [200, 0, 0] and a[1, 1].tolist() == [255, 255, 255] and "alpha" in note

    deep = Image.fromarray(np.full((4, 5), 65535, np.uint16))
    deep.save(tmp_path / "d.png")
    img, note = read_image(tmp_path / "d.png")
    assert np.asarray(img)[0, 0].tolist() == [255, 255, 255] and "8 bit" in note

    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "rgb.png")
    assert read_image(tmp_path / "rgb.png")[1] is None


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((4, 8, 3), np.uint8))  # 8 wide, 4 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert read_image(tmp_path / "r.jpg")[0].size == (4, 8)


def test_unreadable_and_bombs_are_refused(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(MetricInputError, match="cannot read"):
        read_image(tmp_path / "x.png")
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(MetricInputError, match="decompression-bomb"):
        read_image(tmp_path / "big.png", max_pixels=1000)


def test_tensor_conversion():
    x, note = tensor_to_rgb(torch.full((1, 2, 2), 0.5))
    assert x.shape == (3, 2, 2) and note
    la = torch.stack([torch.zeros(2, 2), torch.zeros(2, 2)])  # black, fully transparent -> white
    assert tensor_to_rgb(la)[0].eq(1).all()
    with pytest.raises(MetricInputError, match="C,H,W"):
        tensor_to_rgb(torch.zeros(5, 2, 2))
    img = Image.fromarray(np.array([[[255, 0, 51]]], np.uint8))
    assert pil_to_tensor(img).flatten().tolist() == pytest.approx([1.0, 0.0, 0.2])


def test_folder_keys(tmp_path):
    (tmp_path / "sub").mkdir()
    for p in ("b.png", "sub/a.jpg", "notes.txt"):
        (tmp_path / p).write_bytes(b"")
    assert [k for k, _ in iter_folder(tmp_path)] == ["b", "sub/a"]
    with pytest.raises(MetricInputError, match="not a folder"):
        list(iter_folder(tmp_path / "missing"))


def test_metrics_package_imports_nothing_else_of_cascadekit():
    import ast
    from pathlib import Path

    import cascadekit.metrics as m

    folder = Path(m.__file__).parent
    for py in folder.glob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            assert not any(n.startswith("cascadekit") for n in names), f"{py.name} imports {names}"
    assert m.psnr_per_image.__module__ == "cascadekit.metrics.pixel"
