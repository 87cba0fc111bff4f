"""Verified downloads of metric backbones from a local HTTP server on 127.0.0.1 (good, truncated, tampered, offline)."""
from __future__ import annotations

import hashlib
import http.server
import sys
import threading
from pathlib import Path

import pytest

from cascadekit.metrics.download import DownloadError, DownloadSettings, download_verified, offline_reason
from cascadekit.metrics.errors import MissingWeightsError
from cascadekit.metrics.weights import ALEXNET, INCEPTION, VGG16, BackboneFile, available_metrics, find_weights

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: more than one read chunk
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
OFFLINE_VARS = ("CASCADEKIT_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class Handler(http.server.BaseHTTPRequestHandler):
    """/good.bin: the payload; /short.bin: Content-Length of the payload, half the bytes; /tampered.bin: one
    byte changed; anything else 404. Every request path is recorded."""

    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's API
        Handler.requests.append(self.path)
        name = self.path.rsplit("/", 1)[-1]
        body = {"good.bin": PAYLOAD, "short.bin": PAYLOAD[: len(PAYLOAD) // 2],
                "tampered.bin": PAYLOAD[:-1] + b"\x00"}.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def online(monkeypatch, tmp_path):
    for v in OFFLINE_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.delenv("CASCADEKIT_DOWNLOAD_BASE_URL", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def fake(name: str, digest: str = DIGEST) -> BackboneFile:
    """A test-only backbone: the test registers the digest of its own payload (the published files keep theirs)."""
    return BackboneFile(name, "test backbone", f"https://example.invalid/models/{name}", digest)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_good_download_lands_in_the_hub_cache_verified(server, online, monkeypatch):
    monkeypatch.setenv("CASCADEKIT_DOWNLOAD_BASE_URL", server + "/mirror/")
    path = find_weights(fake("good.bin"))
    assert path == online / "good.bin" and path.read_bytes() == PAYLOAD
    assert Handler.requests == ["/mirror/good.bin"]
    assert find_weights(fake("good.bin")) == path and Handler.requests == ["/mirror/good.bin"]  # cached now
    assert leftovers(online) == ["good.bin"]


@pytest.mark.parametrize("name, words", [("short.bin", "truncated"), ("tampered.bin", "SHA-256"),
                                         ("missing.bin", "404")])
def test_bad_download_is_removed_and_reported(server, online, name, words):
    settings = DownloadSettings(base_url=server, progress=False)
    with pytest.raises(DownloadError) as e:
        find_weights(fake(name), download=settings)
    msg = str(e.value)
    assert words in msg and f"{server}/{name}" in msg and DIGEST in msg and name in msg
    assert isinstance(e.value, MissingWeightsError)
    assert leftovers(online) == []  # no partial file, no temporary file


def test_prefix_digest_as_torch_hub_checks_it(server, tmp_path):
    ok = download_verified(f"{server}/good.bin", tmp_path / "a.bin", DIGEST[:8], DownloadSettings(progress=False))
    assert ok.read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="expected SHA-256 beginning 00000000"):
        download_verified(f"{server}/good.bin", tmp_path / "b.bin", "00000000", DownloadSettings(progress=False))
    assert leftovers(tmp_path) == ["a.bin"]
    with pytest.raises(ValueError, match="hex"):
        download_verified(f"{server}/good.bin", tmp_path / "c.bin", "abc", DownloadSettings(progress=False))


@pytest.mark.parametrize("how", ["flag", *OFFLINE_VARS])
def test_offline_never_touches_the_network(server, online, monkeypatch, how):
    monkeypatch.setenv("CASCADEKIT_DOWNLOAD_BASE_URL", server)
    if how != "flag":
        monkeypatch.setenv(how, "1")
    settings = DownloadSettings.from_env(offline=how == "flag")
    with pytest.raises(MissingWeightsError) as e:
        find_weights(fake("good.bin"), download=settings)
    assert "Nothing is downloaded" in str(e.value) and ("--offline" if how == "flag" else how) in str(e.value)
    assert Handler.requests == [] and leftovers(online) == []
    assert offline_reason(how == "flag") is not None


def test_a_weights_dir_is_never_filled_behind_your_back(server, online, tmp_path):
    wd = tmp_path / "wd"
    wd.mkdir()
    with pytest.raises(MissingWeightsError, match="--weights-dir"):
        find_weights(fake("good.bin"), wd, DownloadSettings(base_url=server))
    assert Handler.requests == [] and leftovers(wd) == []


def test_published_files_carry_their_published_digests():
    assert [f.digest() for f in (ALEXNET, VGG16, INCEPTION)] == ["7be5be79", "397923af", "6726825d"]
    for f in (ALEXNET, VGG16, INCEPTION):
        assert f.digest() in f.filename and f.url.endswith("/" + f.filename)


def test_base_url_override_keeps_the_published_digest(server, online, monkeypatch):
    """A mirror serving other bytes under a published name is refused: the override moves the source only."""
    monkeypatch.setenv("CASCADEKIT_DOWNLOAD_BASE_URL", server)
    tampered = BackboneFile("tampered.bin", ALEXNET.purpose, ALEXNET.url.replace(ALEXNET.filename, "tampered.bin"),
                            ALEXNET.sha256)
    with pytest.raises(DownloadError, match="7be5be79"):
        find_weights(tampered)
    assert leftovers(online) == []


def test_default_metric_list_skips_what_cannot_be_fetched(online, monkeypatch):
    monkeypatch.setenv("CASCADEKIT_OFFLINE", "1")
    kept, skipped = available_metrics(("psnr", "ssim", "lpips", "fid"))
    assert kept == ("psnr", "ssim") and set(skipped) == {"lpips", "fid"}
    assert ALEXNET.filename in skipped["lpips"] and INCEPTION.filename in skipped["fid"]
    assert "CASCADEKIT_OFFLINE=1" in skipped["fid"]


@pytest.mark.parametrize("var", OFFLINE_VARS)
def test_hub_weights_and_controlnets_honour_every_offline_variable(monkeypatch, var):
    """Official weights and ControlNets by hub id go through huggingface_hub with the same offline rule."""
    from cascadekit.codec.errors import WeightsError
    from cascadekit.codec.weights.controlnet import resolve_controlnet
    from cascadekit.codec.weights.hub import hub_download

    for v in OFFLINE_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(var, "1")
    with pytest.raises(WeightsError, match=rf"offline \({var}=1\)"):
        resolve_controlnet("cascadekit-test/no-such-repo", "canny")
    folder, why = hub_download("cascadekit-test/no-such-repo", ["stage_a.safetensors"])
    assert folder is None and f"offline ({var}=1)" in why


def test_evaluate_default_metrics_skip_unavailable_backbones_explicit_ones_stop(online, tmp_path, tmp_path_factory,
                                                                                monkeypatch):
    import json

    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).parent))
    from _tiny_weights import tiny_weights_dir
    from cascadekit.cli.main import main

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(imgs / f"im{i}.png")
    base = [str(imgs), "--weights", str(tiny_weights_dir(tmp_path_factory)), "--size", "64", "--encoder-resolution",
            "64", "--steps", "1", "--quiet", "--device", "cpu"]
    r = CliRunner().invoke(main, ["evaluate", *base, "--out", str(tmp_path / "r1"), "--offline"])
    assert r.exit_code == 0, r.output
    assert "NOTE: lpips skipped" in r.output and "NOTE: fid skipped" in r.output and "--offline" in r.output
    report = json.loads((tmp_path / "r1" / "metrics.json").read_text())
    assert set(report["settings"]["skipped_metrics"]) == {"lpips", "fid"} and report["aggregate"]["psnr"]["count"] == 2
    r = CliRunner().invoke(main, ["evaluate", *base, "--out", str(tmp_path / "r2"), "--offline",
                                  "--metrics", "psnr,lpips"])
    assert r.exit_code == 2 and "alexnet-owt-7be5be79.pth" in r.output
    assert "Nothing is downloaded (--offline)" in r.output
    assert not (tmp_path / "r2" / "metrics.json").exists()
