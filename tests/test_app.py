"""`cascadekit app` through its HTTP API (gradio_client): every tab, bad uploads, one job at a time, a bounded
queue, cancel, and the launch settings (127.0.0.1, no share link)."""
from __future__ import annotations

import threading
import time

import pytest
import torch

pytest.importorskip("gradio", reason="the app needs gradio (pip install 'cascadekit[app]')")
from gradio_client import Client, handle_file  # noqa: E402

from _tiny_weights import tiny_weights_dir  # noqa: E402
from app_helpers import (count_generate_steps, disconnect_mid_job, fixtures, generate_args, running_app,  # noqa: E402
                         started, wait_until)
from cascadekit.generator.pipeline import TextToImagePipeline, read_png_parameters  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def files(weights, tmp_path_factory):
    return fixtures(tmp_path_factory.mktemp("app"), weights)


@pytest.fixture(scope="module")
def app(weights, files):
    with running_app(weights, files) as (demo, url):
        yield demo, Client(url, verbose=False)


def test_generate_png_carries_the_parameters_of_sample(app, weights):
    _, client = app
    gallery, controls, pngs, params = client.predict(**generate_args(), api_name="/generate")
    assert len(gallery) == 1 and controls == [] and len(pngs) == 1
    embedded = read_png_parameters(pngs[0])
    assert embedded == params and embedded["prompt"] == "a red fox" and embedded["seed"] == 7
    assert embedded["prior_steps"] == 2 and embedded["decoder_steps"] == 1 and embedded["tiny_weights"]
    pipe = TextToImagePipeline.from_pretrained(str(weights))  # the library call the app makes
    direct = pipe("a red fox", height=64, width=64, seed=7, prior_steps=2, decoder_steps=1)
    assert direct.parameters[0] == embedded
    from PIL import Image
    import numpy as np
    got = torch.from_numpy(np.array(Image.open(pngs[0]))).permute(2, 0, 1).float() / 255
    assert (got - direct.images[0]).abs().max() <= 1 / 255 + 1e-6  # same pixels up to the 8-bit rounding


def test_generate_variation_img2img_run_and_controlnet(app, files):
    _, client = app
    photo = handle_file(str(files["photo"]))
    _, _, pngs, p = client.predict(**generate_args(init=photo, strength=0.5, run="run1"), api_name="/generate")
    assert p["init_image"] and p["strength"] == 0.5 and p["prior_steps"] == 1
    assert p["stage_c_weights"] == str(files["run"])
    _, _, _, p = client.predict(**generate_args(variation=photo, n=2), api_name="/generate")
    assert p["image_variation"] and p["batch_size"] == 2
    _, controls, pngs, p = client.predict(**generate_args(cnet="canny", control_image=photo), api_name="/generate")
    assert p["control"] == "canny" and len(controls) == 1 and read_png_parameters(pngs[0])["control"] == "canny"


def test_generate_with_a_lora_file(app, weights, tmp_path):
    from test_lora_sampling import _lora_file

    lora = _lora_file(weights, tmp_path / "fernando.safetensors", 1)
    _, client = app
    _, _, pngs, p = client.predict(**generate_args(prompt="a dog [fernando]", lora=[handle_file(str(lora))]),
                                   api_name="/generate")
    assert p["lora"] and p["lora"].endswith("fernando.safetensors") and p["prompt"] == "a dog [fernando]"


def test_bad_requests_are_messages(app, files):
    demo, client = app
    with pytest.raises(Exception, match="init image broken.png cannot be used"):
        client.predict(**generate_args(init=handle_file(str(files["broken"]))), api_name="/generate")
    with pytest.raises(Exception, match="not in the list of choices"):  # Gradio checks the choices, and so do we:
        client.predict(**generate_args(run="../../etc"), api_name="/generate")
    from cascadekit.cli.app_generate import GenerateRequest
    from cascadekit.codec.errors import InputError
    with pytest.raises(InputError, match="unknown training run"):
        GenerateRequest("x", run="../../etc").check(demo.cascadekit.config, {})
    with pytest.raises(Exception, match="cannot be used"):
        client.predict([handle_file(str(files["broken"]))], 128, 0, "lite", 2, False, "lite", 2,
                       api_name="/reconstruct")
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict("/etc", api_name="/open_store")


def test_reconstruct_two_decoders(app, files):
    _, client = app
    grids, table = client.predict([handle_file(str(files["photo"]))], 64, 0, "lite", 1, True, "lite", 2,
                                  api_name="/reconstruct")
    rows = table["data"]
    assert len(grids) == 2 and len(rows) == 2
    assert rows[0][1].endswith("1 steps, cfg 1.1") and rows[1][1].endswith("2 steps, cfg 1.1")
    assert all(0 < float(r[2]) < 100 and -1 <= float(r[3]) <= 1 for r in rows)


def test_store_summary_pages_and_full_decode(app):
    _, client = app
    info, skips, number, grid = client.predict("photos.zarr", api_name="/open_store")
    assert "16 rows, 16 ok, 0 skipped" in info and skips["data"] == [] and "16 usable samples, 2 pages" in info
    assert number == 1 and len(grid) == 12 and grid[0]["caption"].startswith("0 · img000 · caption 0")
    number, grid = client.predict("photos.zarr", 1, api_name="/next_page")
    assert number == 2 and len(grid) == 4 and grid[0]["caption"].startswith("12 · img012")
    number, grid = client.predict("photos.zarr", 2, api_name="/next_page")
    assert number == 2  # the last page stays
    image, caption = client.predict("photos.zarr", 5, api_name="/decode_sample")
    assert caption == "img005: caption 5" and image


def test_store_with_a_skipped_image_shows_the_reason(app):
    _, client = app
    info, skips, number, grid = client.predict("skips.zarr", api_name="/open_store")
    assert "4 rows, 3 ok, 1 skipped" in info and "truncated" in info and "3 usable samples, 1 pages" in info
    assert [r[2:] for r in skips["data"]] == [["cut", "truncated"]] and len(grid) == 3


def test_reconstruct_base_and_fine_tuned_stage_b(app, files):
    demo, client = app
    assert list(demo.cascadekit.decoders) == ["lite", "runb", "runb (ema)", "tuned"]
    photo, psnr = [handle_file(str(files["photo"]))], {}
    for first, second in (("lite", "runb"), ("runb (ema)", "tuned")):  # side by side, PSNR / SSIM each
        grids, table = client.predict(photo, 64, 0, first, 1, True, second, 1, api_name="/reconstruct")
        rows = table["data"]
        assert [r[1] for r in rows] == [f"Stage B {d}, 1 steps, cfg 1.1" for d in (first, second)]
        assert len(grids) == 2 and all(0 < float(r[2]) < 100 and -1 <= float(r[3]) <= 1 for r in rows)
        psnr[first], psnr[second] = float(rows[0][2]), float(rows[1][2])
    assert psnr["tuned"] == psnr["runb"]  # --stage-b-weights FILE: the run's own file, same seed
    assert len({psnr["lite"], psnr["runb"], psnr["runb (ema)"]}) == 3  # base, fine-tuned and its EMA all differ
    step = files["stage_b_run"] / "checkpoints" / "step_000001"
    assert demo.cascadekit.models.decoder("runb (ema)").files["stage_b"] == step / "ema.safetensors"
    with pytest.raises(Exception, match="not in the list of choices"):  # no typed path is opened
        client.predict(photo, 64, 0, str(step / "ema.safetensors"), 1, False, "lite", 1, api_name="/reconstruct")


def test_generate_with_a_run_and_its_ema(app, files):
    import numpy as np
    from PIL import Image

    demo, client = app
    assert list(demo.cascadekit.runs) == ["run1", "runc", "runc (ema)"]  # the Stage B run is a decoder
    step, pixels = files["stage_c_run"] / "checkpoints" / "step_000001", []
    for run, name in (("runc", "model.safetensors"), ("runc (ema)", "ema.safetensors")):
        _, _, pngs, p = client.predict(**generate_args(run=run), api_name="/generate")
        assert p["stage_c_weights"] == str(step / name) == read_png_parameters(pngs[0])["stage_c_weights"]
        pixels.append(np.array(Image.open(pngs[0])))
    assert not np.array_equal(*pixels)
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict(**generate_args(run="runb"), api_name="/generate")


def test_launch_refuses_runs_of_another_kind(weights, files, tmp_path, monkeypatch):
    import gradio as gr
    from click.testing import CliRunner

    from cascadekit.cli.app_choices import decoder_choices, stage_c_choices
    from cascadekit.cli.main import main
    from cascadekit.codec.errors import InputError
    from cascadekit.generator.checkpoint import save_checkpoint

    lora = tmp_path / "lora_run"
    save_checkpoint(lora, 1, weights={"w": torch.zeros(2)}, weights_name="lora.safetensors", state={"step": 1})
    with pytest.raises(InputError, match="holds lora.safetensors .a LoRA run"):
        stage_c_choices({"l": lora})
    with pytest.raises(InputError, match="is a Stage C run; give it with --run"):
        decoder_choices({}, {"c": files["stage_c_run"]}, ["lite"])
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: None)
    r = CliRunner().invoke(main, ["app", "--weights", str(weights), "--run", str(lora)])
    assert r.exit_code == 2 and "a LoRA run" in r.output
    r = CliRunner().invoke(main, ["app", "--weights", str(weights), "--stage-b-weights", str(files["stage_b_run"])])
    assert r.exit_code == 0, r.output


def test_two_generate_requests_run_one_after_the_other(app, monkeypatch):
    import cascadekit.cli.app as app_module

    spans, real = [], app_module.generate

    def timed(*a, **k):
        t0 = time.monotonic()
        try:
            return real(*a, **k)
        finally:
            spans.append((t0, time.monotonic()))

    monkeypatch.setattr(app_module, "generate", timed)
    _, client = app
    jobs = [client.submit(**generate_args(seed=s, steps=3), api_name="/generate") for s in (1, 2)]
    seeds = sorted(j.result(timeout=300)[3]["seed"] for j in jobs)
    assert seeds == [1, 2] and len(spans) == 2
    (a0, a1), (b0, b1) = sorted(spans)
    assert a1 <= b0  # never two jobs at once


@pytest.mark.slow
def test_full_queue_is_refused_and_cancel_frees_the_job(weights, files, monkeypatch):
    from cascadekit.cli.app_jobs import Job

    with running_app(weights, files, queue_size=1) as (demo, url):
        clients = [Client(url, verbose=False) for _ in range(3)]
        long = generate_args(steps=60, dsteps=40, height=128, width=128)
        # the first job holds the slot until the other two were submitted (on a fast machine it would otherwise
        # finish before they arrive, and the queue would never be full)
        gate, real_start = threading.Event(), Job.start  # every job's Job (one per request)
        monkeypatch.setattr(Job, "start", lambda self: (gate.wait(60), real_start(self))[1])
        jobs = [clients[0].submit(**long, api_name="/generate")]
        time.sleep(1.5)  # the first one runs
        jobs += [c.submit(**generate_args(), api_name="/generate") for c in clients[1:]]
        time.sleep(1.5)  # both reached the server: one queued, one refused
        gate.set()
        monkeypatch.setattr(Job, "start", real_start)
        errors = []
        for j in jobs[1:]:
            try:
                j.result(timeout=300)
            except Exception as e:  # noqa: BLE001 - the refused one
                errors.append(str(e))
        assert len(errors) == 1 and "queue is full" in errors[0].lower()
        jobs[0].result(timeout=300)
        # Cancel (the button's endpoint, from the job's own session): the running job stops at its next step, the
        # next job runs normally
        spans = []
        monkeypatch.setattr(Job, "start", lambda self: (spans.append(time.monotonic()), real_start(self))[1])
        t0 = time.monotonic()
        job = clients[0].submit(**long, api_name="/generate")
        while not spans and time.monotonic() - t0 < 60:
            time.sleep(0.1)
        time.sleep(0.5)
        clients[0].predict(api_name="/cancel_generate")
        with pytest.raises(Exception, match="cancelled"):
            job.result(timeout=300)
        assert time.monotonic() - t0 < 30
        assert clients[2].predict(**generate_args(), api_name="/generate")[3]["seed"] == 7
        # a request its client cancels (as on disconnect): Gradio marks it dead, the job stops at its next step
        spans.clear()
        t0 = time.monotonic()
        job = clients[0].submit(**long, api_name="/generate")
        while not spans and time.monotonic() - t0 < 60:
            time.sleep(0.1)
        time.sleep(0.5)
        job.cancel()
        t1 = time.monotonic()
        assert clients[2].predict(**generate_args(seed=9), api_name="/generate")[3]["seed"] == 9
        assert time.monotonic() - t1 < 20  # the slot was free again: the cancelled job did not run to its end


@pytest.fixture
def counted_runs(monkeypatch):
    return count_generate_steps(monkeypatch, delay=0.05)  # a 60-step job lasts >= 3 s on any machine


@pytest.mark.slow
def test_cancel_is_per_session_and_a_disconnect_frees_the_work(app, counted_runs):
    demo, client = app
    a, b = Client(client.src, verbose=False), Client(client.src, verbose=False)
    runs = counted_runs

    def long(seed):
        return generate_args(steps=60, dsteps=2, seed=seed)
    # another session's Cancel leaves this session's job alone: it runs all its steps
    job = a.submit(**long(1), api_name="/generate")
    wait_until(started(runs, 1))
    b.predict(api_name="/cancel_generate")
    assert job.result(timeout=300)[3]["seed"] == 1 and runs[0]["counts"]["Stage C"] == 60
    # this session's Cancel stops its own job at the next step; the other session's queued job runs normally
    job = a.submit(**long(2), api_name="/generate")
    wait_until(started(runs, 2))
    queued = b.submit(**generate_args(seed=3), api_name="/generate")
    time.sleep(0.3)
    a.predict(api_name="/cancel_generate")
    with pytest.raises(Exception, match="cancelled"):
        job.result(timeout=300)
    assert queued.result(timeout=300)[3]["seed"] == 3
    assert runs[1]["counts"]["Stage C"] < 60 and runs[1]["t1"] <= runs[2]["t0"]
    # Gradio's own cancel of the request (the page's Cancel, gradio_client's Job.cancel): the work stops too
    job = a.submit(**long(4), api_name="/generate")
    wait_until(started(runs, 4))
    job.cancel()
    t = time.monotonic()
    assert b.predict(**generate_args(seed=5), api_name="/generate")[3]["seed"] == 5
    assert runs[3]["counts"]["Stage C"] < 60 and runs[3]["t1"] <= runs[4]["t0"] < t + 10
    # a client that disconnects mid-job (a closed tab): the job stops at its next step, the next one starts
    data = list(long(6).values())
    t = disconnect_mid_job(client.src, demo, "generate", data, started(runs, 6))
    assert b.predict(**generate_args(seed=7), api_name="/generate")[3]["seed"] == 7
    assert runs[5]["counts"]["Stage C"] < 60 and runs[5]["t1"] <= runs[6]["t0"] < t + 10
    a.close()
    b.close()


def test_launch_binds_localhost_without_share(monkeypatch, weights):
    import gradio as gr
    from click.testing import CliRunner

    from cascadekit.cli.main import main

    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(kw))
    r = CliRunner().invoke(main, ["app", "--weights", str(weights), "--port", "7999"])
    assert r.exit_code == 0, r.output
    assert seen["server_name"] == "127.0.0.1" and seen["share"] is False and seen["server_port"] == 7999
    assert seen["max_file_size"] == 20 << 20 and "warning" not in r.output
    r = CliRunner().invoke(main, ["app", "--weights", str(weights), "--host", "0.0.0.0"])
    assert r.exit_code == 0 and "warning: --host 0.0.0.0" in r.output and seen["server_name"] == "0.0.0.0"
    r = CliRunner().invoke(main, ["app", "--weights", str(weights), "--store", "/nonexistent"])
    assert r.exit_code == 2 and "--store" in r.output


@pytest.mark.parametrize("control", ["inpainting", "sr"])
def test_generate_job_with_inpainting_mask_and_sr(control, weights, files, tmp_path):
    """The Generate job as Python users call it: an inpainting ControlNet with a painted mask (the ImageMask's
    layer alpha), and super-resolution."""
    import numpy as np
    from controlnet_helpers import write_controlnet

    from cascadekit.cli.app import _mask_of
    from cascadekit.cli.app_generate import GenerateRequest, generate
    from cascadekit.cli.app_jobs import AppConfig, Job, Models

    config = AppConfig(weights=str(weights), work_dir=tmp_path)
    nets = {control: write_controlnet(tmp_path / f"{control}.safetensors", control)}
    layer = np.zeros((96, 128, 4), np.uint8)
    layer[20:60, 30:90, 3] = 255  # the painted strokes
    mask = _mask_of({"background": None, "layers": [layer], "composite": None}) if control == "inpainting" else None
    assert mask is None or (mask.sum() == 40 * 60)
    size = 64 if control == "inpainting" else 128
    req = GenerateRequest("a cat", height=size, width=size, seed=1, steps=2, decoder_steps=1, controlnet=control,
                          control_image=str(files["photo"]), mask=mask, strength=1.0)
    seen = []
    out = generate(req, Models(config), config, Job(), nets, report=lambda s, i, n: seen.append((s, i, n)))
    assert out["parameters"]["control"] == control and len(out["control"]) == 1
    assert ("Stage C", 2, 2) in seen and ("Stage B", 1, 1) in seen
    if control == "inpainting":
        with pytest.raises(Exception, match="needs a mask"):
            generate(GenerateRequest("a cat", height=64, width=64, controlnet=control,
                                     control_image=str(files["photo"])), Models(config), config, Job(), nets)
