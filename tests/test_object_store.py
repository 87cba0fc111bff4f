"""Latent stores in object storage, against a real S3-compatible server (moto's server mode on 127.0.0.1):
encode to s3://, SIGKILL, resume -> identical to a local run; reading while a build writes; a missing bucket and a
bucket that refuses writes fail before any encoding; inspect / verify / LatentDataset / the CLI chain on s3://;
no credential in store attributes, messages or logs."""
from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from datasets_helpers import TinyEncoder, make_broken, make_folder, store_arrays  # noqa: E402

from cascadekit.codec.errors import InputError  # noqa: E402
from cascadekit.datasets import store as S  # noqa: E402
from cascadekit.datasets.access import LatentStore  # noqa: E402
from cascadekit.datasets.builder import build_latent_dataset, store_summary  # noqa: E402
from cascadekit.datasets.remote import RemotePath, is_url, redact, store_path  # noqa: E402

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

KW = dict(resolution=64, batch_size=2, chunk_rows=4, num_workers=0, progress=False)
KEY_ID = "AKIACASCADEKITTEST01"
SECRET = "cascadekit-secret-Zq8Wn3vT5xYp2L"
BUCKET = "cascadekit-test"
pytestmark = pytest.mark.filterwarnings("ignore:.*in object storage, where stores have no lock")


def _reset_clients() -> None:
    s3fs.S3FileSystem.clear_instance_cache()  # cached clients keep the credentials they were made with


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 and the environment every AWS client reads (nothing passed as arguments)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        _reset_clients()
        fs = s3fs.S3FileSystem()
        fs.mkdir(BUCKET)
        yield fs, env
        _reset_clients()
    server.stop()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3corpus")
    make_folder(root / "photos")
    make_broken(root / "photos" / "broken")  # skipped rows and an error table too
    ref = root / "ref.zarr"
    build_latent_dataset([root / "photos"], ref, TinyEncoder(), **KW)
    return root / "photos", ref


class NeverEncoder(TinyEncoder):
    def encode(self, x):
        raise AssertionError("encoding started although the output cannot be written")


def _same_store(a, b) -> None:
    ra, rb = store_arrays(a), store_arrays(b)
    assert np.abs(ra["/latents"]).max() > 0
    for name in ra:
        assert np.array_equal(ra[name], rb[name]), name
    ea, eb = S.open_store(a)["errors"], S.open_store(b)["errors"]
    assert ea["row"].shape[0] > 0
    for name in ("row", "key", "reason"):
        assert np.array_equal(ea[name][:], eb[name][:]), name


def test_urls_and_paths():
    assert is_url("s3://b/x.zarr") and is_url("memory://x") and not is_url("/tmp/x") and not is_url("file:///tmp/x")
    assert store_path("file:///tmp/a%20b.zarr") == Path("/tmp/a b.zarr")
    assert redact("s3://AKIA:secret@bucket/x") == "s3://***@bucket/x"
    p = RemotePath("memory://cascadekit-test/a.zarr")
    assert str(p / "zarr.json") == "memory://cascadekit-test/a.zarr/zarr.json" and p.name == "a.zarr"
    (p / "x.bin").write_bytes(b"123")
    q = pickle.loads(pickle.dumps(p / "x.bin"))  # the client is made again, not pickled
    assert q == p / "x.bin" and q.read_bytes() == b"123" and (p / "x.bin").parent == p
    with pytest.raises(InputError, match="Protocol not known"):
        store_path("nosuchproto://bucket/x.zarr")


def test_build_to_s3_equals_local_and_reads_back(s3, corpus):
    fs, _ = s3
    photos, ref = corpus
    url = f"s3://{BUCKET}/plain.zarr"
    with pytest.warns(UserWarning, match="no lock"):
        summary = build_latent_dataset([photos], url, TinyEncoder(), **KW)
    want = store_summary(ref)
    assert summary.store == url and (summary.ok, summary.skipped) == (want.ok, want.skipped) and want.skipped
    _same_store(ref, url)
    st = LatentStore(url)
    assert st.attrs["complete"] and isinstance(st.path, RemotePath)
    # the whole reading side works on the URL
    from cascadekit.datasets.inspect import inspect_store
    from cascadekit.datasets.reader import LatentDataset
    from cascadekit.datasets.verify import verify_store

    rep = inspect_store(url, write=True)
    assert rep["store"] == url and rep["store_bytes"] > 0 and rep["groups"]
    assert fs.exists(f"{BUCKET}/plain.zarr/inspect/zarr.json")
    local = [b["latents"] for b in LatentDataset(ref, batch_size=3, shuffle=False)]
    remote = [b["latents"] for b in LatentDataset(url, batch_size=3, shuffle=False)]
    assert all((a == b).all() for a, b in zip(local, remote)) and len(local) == len(remote) == -(-want.ok // 3)
    # DataLoader workers (forked: s3 clients are not fork-safe, each worker makes its own)
    import torch

    def rows(batches):
        return sorted(r.numpy().tobytes() for t in batches for r in t)

    ds = LatentDataset(url, batch_size=2, shuffle=True, seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    assert rows(b["latents"] for b in loader) == rows(local)
    assert verify_store(url)["ok"]
    # a lost chunk object is found by --verify, skipped by readers, and re-created by a resumed encode
    fs.rm(f"{BUCKET}/plain.zarr/latents/c/1/0/0/0")
    ver = verify_store(url)
    assert not ver["ok"] and ver["problems"][0]["array"] == "latents" and ver["problems"][0]["rows"] == [4, 8]
    s = build_latent_dataset([photos], url, TinyEncoder(), **KW)
    assert s.resumed_rows == want.rows - 4 and s.encoded_now + s.skipped_now == 4
    _same_store(ref, url)


def test_other_settings_refused_then_overwritten_and_foreign_prefix_refused(s3, corpus):
    fs, _ = s3
    photos, _ = corpus
    url = f"s3://{BUCKET}/rebuilt.zarr"
    build_latent_dataset([photos], url, TinyEncoder(), **KW)
    with pytest.raises(InputError, match="different settings"):
        build_latent_dataset([photos], url, TinyEncoder(), **{**KW, "resolution": 96})
    s = build_latent_dataset([photos], url, TinyEncoder(), **{**KW, "resolution": 96}, overwrite=True)
    assert s.resumed_rows == 0 and S.open_store(url).attrs["preprocess"]["resolution"] == 96
    fs.pipe_file(f"{BUCKET}/foreign/notes.txt", b"mine")
    with pytest.raises(InputError, match="not a cascadekit latent store"):
        build_latent_dataset([photos], f"s3://{BUCKET}/foreign", TinyEncoder(), **KW, overwrite=True)
    assert fs.cat_file(f"{BUCKET}/foreign/notes.txt") == b"mine" and fs.ls(f"{BUCKET}/foreign") == [
        f"{BUCKET}/foreign/notes.txt"]


def _kill_mid_build(url: str, photos: Path, env: dict, ref: Path, delay: float = 0.25, timeout: float = 90):
    """A build in a subprocess (``delay`` s per batch), read while it writes, SIGKILLed after >= 1 chunk."""
    fs = s3fs.S3FileSystem()
    cmd = [sys.executable, "-m", "datasets_helpers", url, str(delay), "4", str(photos)]
    penv = {**os.environ, **env, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, env=penv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    want = store_arrays(ref)["/latents"]
    seen_ok, deadline = 0, time.time() + timeout
    status_prefix = url.split("://", 1)[1] + "/status/c"
    while time.time() < deadline and p.poll() is None:
        fs.invalidate_cache()
        if fs.exists(status_prefix) and fs.ls(status_prefix):
            break
        try:  # read while writing: every row the store calls ok is complete and final
            gv = LatentStore(url).group("")
            rows = gv.select(["latents"]).rows
            if len(rows):
                got = S.read_rows(gv.g, "latents", slice(0, gv.n))[rows]
                assert np.array_equal(got, want[rows])
                seen_ok = max(seen_ok, len(rows))
        except InputError:
            pass  # not created yet
        time.sleep(0.05)
    assert p.poll() is None, p.stdout.read().decode()[-3000:]
    p.send_signal(signal.SIGKILL)
    p.wait()
    out = p.stdout.read().decode()
    assert KEY_ID not in out and SECRET not in out
    return out


@pytest.mark.slow
def test_sigkill_and_resume_on_s3_is_identical_to_local(s3, corpus):
    _, env = s3
    photos, ref = corpus
    url = f"s3://{BUCKET}/killed.zarr"
    _kill_mid_build(url, photos, env, ref)
    st = S.read_status(S.open_store(url))
    assert 0 < (st != 0).sum() < len(st), "kill did not land mid-run"
    gv = LatentStore(url).group("")
    ok = gv.select(["latents"]).rows  # read a half-built store: only complete rows
    assert np.array_equal(S.read_rows(gv.g, "latents", slice(0, gv.n))[ok], store_arrays(ref)["/latents"][ok])
    s = build_latent_dataset([photos], url, TinyEncoder(), **KW)
    assert s.resumed_rows == int((st != 0).sum()) and s.encoded_now + s.skipped_now == len(st) - s.resumed_rows
    _same_store(ref, url)
    assert S.open_store(url).attrs["complete"]


def test_missing_bucket_fails_before_encoding(s3, corpus):
    photos, _ = corpus
    with pytest.raises(InputError, match="bucket 'no-such-bucket-here' of s3://no-such-bucket-here/x.zarr does not "
                                         "exist") as e:
        build_latent_dataset([photos], "s3://no-such-bucket-here/x.zarr", NeverEncoder(), **KW)
    assert KEY_ID not in str(e.value) and SECRET not in str(e.value)


def test_bucket_refusing_writes_fails_before_encoding(s3, corpus, monkeypatch):
    """A read-only IAM user (moto enforces IAM once INITIAL_NO_AUTH_ACTION_COUNT is reached)."""
    import boto3
    from moto import settings

    photos, _ = corpus
    iam, client = boto3.client("iam"), boto3.client("s3")
    client.create_bucket(Bucket="cascadekit-read-only")
    iam.create_user(UserName="reader")
    allow = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*",
                                                      "Action": ["s3:GetObject", "s3:ListBucket"]}]}
    iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(allow))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    _reset_clients()
    try:
        with pytest.raises(InputError, match="cascadekit-read-only/x.zarr refuses writes") as e:
            build_latent_dataset([photos], "s3://cascadekit-read-only/x.zarr", NeverEncoder(), **KW)
        assert key["SecretAccessKey"] not in str(e.value) and key["AccessKeyId"] not in str(e.value)
    finally:
        monkeypatch.undo()
        _reset_clients()


def _zarr_json_text(fs, prefix: str) -> str:
    return "\n".join(fs.cat_file(p).decode() for p in fs.find(prefix) if p.endswith("zarr.json"))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*TINY RANDOM")
def test_cli_chain_on_s3_without_leaking_credentials(s3, corpus, tmp_path, caplog):
    """encode -> inspect --verify -> embed-text -> train --data -> evaluate --store, all on one s3:// URL."""
    from click.testing import CliRunner

    from cascadekit.cli.main import main
    from cascadekit.codec.weights.tiny import write_tiny_weights

    fs, _ = s3
    photos, ref = corpus
    want = store_summary(ref)
    weights = tmp_path / "tiny"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_tiny_weights(weights)
    url = f"s3://{BUCKET}/cli.zarr"
    run = CliRunner().invoke
    caplog.set_level(logging.INFO)  # every logger at INFO (botocore's DEBUG prints signed request headers)
    outputs = []

    def ok(args):
        r = run(main, args, catch_exceptions=False)
        outputs.append(r.output)
        assert r.exit_code == 0, r.output
        return r.output

    ok(["encode", str(photos), "--out", url, "--weights", str(weights), "--resolution", "64", "--batch-size", "4",
        "--chunk-rows", "4", "--num-workers", "0", "--quiet"])
    assert fs.exists(f"{BUCKET}/cli.zarr/inspect/preview.png")
    assert f"{want.ok} ok" in ok(["inspect", url, "--weights", str(weights), "--verify"])
    ok(["embed-text", url, "--weights", str(weights), "--quiet"])
    assert S.open_store(url)["clip_text"].shape[0] == want.rows
    ok(["train", "--data", url, "--config", "tiny", "--out", str(tmp_path / "run"), "--device", "cpu",
        "--set", "steps=2", "--set", "save_every=2", "--set", "log_every=1"])
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()
    ok(["evaluate", "--store", url, "--out", str(tmp_path / "report"), "--weights", str(weights),
        "--metrics", "psnr", "--device", "cpu"])
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["settings"]["mode"] == "store"
    r = run(main, ["encode", str(photos), "--out", "s3://no-such-bucket-here/x.zarr", "--weights", str(weights),
                   "--quiet"])
    outputs.append(r.output)
    assert r.exit_code == 2 and "error:" in r.output and "does not exist" in r.output
    text = "\n".join(outputs) + "\n".join(r.getMessage() for r in caplog.records) + _zarr_json_text(fs, BUCKET)
    assert "cascadekit.latent-dataset" in text  # the attributes were read
    assert KEY_ID not in text and SECRET not in text


@pytest.mark.slow
def test_unreachable_endpoint_is_one_clear_error(s3, monkeypatch):
    from click.testing import CliRunner

    from cascadekit.cli.main import main

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # one connection attempt: the same error without botocore's
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")  # back-off retries (~7-10 s of waiting)
    _reset_clients()
    try:
        r = CliRunner().invoke(main, ["inspect", f"s3://{BUCKET}/plain.zarr", "--no-preview"])
    finally:
        monkeypatch.undo()
        _reset_clients()
    assert r.exit_code == 2 and "error: cannot reach s3://cascadekit-test/plain.zarr" in r.output
    assert "Traceback" not in r.output and SECRET not in r.output and KEY_ID not in r.output
