"""`cascadekit app`: a local Gradio web app over the library — Generate (text-to-image, variation, img2img, LoRA,
Stage C weights of a training run or its EMA, ControlNet), Reconstruct (one or two decoders side by side: the Stage B
variants of the weights and fine-tuned Stage B runs / files) and Stores (counts, statistics, skip reasons, a paged
previewer grid, a sample's full decode).

The jobs live in ``app_generate`` / ``app_reconstruct`` / ``app_stores`` (callable from Python), the choices a
launch offers in ``app_choices``, how an event runs its job (per-session cancel, disconnect) in ``app_events``;
this module only lays out the page. Gradio is imported lazily (an optional extra: ``pip install cascadekit[app]``).
One job runs at a time (every job shares one concurrency slot); the queue holds ``--queue-size`` more, beyond that
a request is refused as busy. The app binds 127.0.0.1 unless ``--host`` says otherwise, never makes share links,
and opens only the weights, stores, runs and ControlNets given at launch.
"""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import click
import numpy as np

from cascadekit.cli.app_choices import stage_c_choices
from cascadekit.cli.app_events import cancel_event, gradio, job_event
from cascadekit.cli.app_generate import SAMPLERS, SIZES, GenerateRequest, generate
from cascadekit.cli.app_jobs import AppConfig, Models, Sessions
from cascadekit.cli.app_reconstruct import Decoder, reconstruct
from cascadekit.cli.app_stores import PAGE, StoreIndex, full_decode, page, report, store_of
from cascadekit.cli.common import default_dtype, pick_device, reports_user_errors
from cascadekit.cli.params import COUNT, DEVICE

SLOT = "cascadekit-job"  # the one concurrency slot every job shares
BANNER = ("TINY RANDOM WEIGHTS in use: every network is random noise and every picture is meaningless. "
          "Start the app with --weights DIR (the official Stable Cascade files) for real results.")


def labelled(paths) -> dict[str, Path]:
    """Launch paths -> {label: path}, labels the folder/file names made unique with #2, #3..."""
    out: dict[str, Path] = {}
    for p in map(Path, paths):
        label, k = p.resolve().name or str(p), 1
        while label in out:
            k += 1
            label = f"{p.resolve().name}#{k}"
        out[label] = p
    return out


def _reporter(progress):
    return lambda stage, i, n: progress((i, n), desc=stage)


class App:
    """The app's state: settings, models, the running jobs of each session, opened store indexes, and the
    weights choices of the launch (read once here: a bad --run / --stage-b-weights fails before the page)."""

    def __init__(self, config: AppConfig, controlnets: dict[str, Path] | None = None):
        self.config, self.controlnets = config, dict(controlnets or {})
        self.models, self.sessions, self.indexes = Models(config), Sessions(), {}
        self.runs, self.decoders = stage_c_choices(config.runs), self.models.decoders

    def index(self, label: str) -> StoreIndex:
        if label not in self.indexes:
            self.indexes[label] = StoreIndex.open(store_of(label, self.config))
        return self.indexes[label]


def _generate_tab(gr, app: App):  # long: the tab's widgets in their visual order, then its two events
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt")
            negative = gr.Textbox(label="Negative prompt")
            with gr.Row():
                width = gr.Dropdown(list(SIZES), value=1024, label="Width")
                height = gr.Dropdown(list(SIZES), value=1024, label="Height")
                n = gr.Slider(1, 8, value=1, step=1, label="Images per prompt")
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
                random_seed = gr.Checkbox(value=False, label="Random seed")
            with gr.Accordion("Stage C / Stage B", open=False):
                steps = gr.Slider(1, 60, value=20, step=1, label="Stage C steps")
                guidance = gr.Slider(0, 20, value=4.0, step=0.1, label="Stage C guidance")
                shift = gr.Slider(0.1, 5, value=2.0, step=0.1, label="Stage C shift")
                sampler = gr.Dropdown(list(SAMPLERS), value="ddpm", label="Sampler")
                dsteps = gr.Slider(1, 40, value=10, step=1, label="Stage B steps")
                dguidance = gr.Slider(0, 5, value=1.1, step=0.1, label="Stage B guidance")
            with gr.Accordion("Image variation, image-to-image", open=False):
                variation = gr.File(label="Variation image (its CLIP embedding conditions Stage C)", type="filepath")
                init = gr.File(label="Init image (image-to-image)", type="filepath")
                strength = gr.Slider(0.05, 1, value=0.8, step=0.05, label="Strength (img2img / inpainting)")
            with gr.Accordion("LoRA, Stage C weights", open=False):
                lora = gr.File(label="LoRA files (.safetensors)", file_count="multiple", file_types=[".safetensors"],
                               type="filepath")
                tokens = gr.Textbox(label="LoRA tokens of official files (TOKEN=INIT_REGEX, comma separated)")
                run = gr.Dropdown([None, *app.runs], value=None, label="Stage C weights of a run (--run)")
            with gr.Accordion("ControlNet", open=False):
                cnet = gr.Dropdown([None, *app.controlnets], value=None, label="ControlNet (--controlnet)")
                control_image = gr.File(label="Control image", type="filepath")
                mask = gr.ImageMask(label="Inpainting: paint the area to repaint", type="numpy")
                cstrength = gr.Slider(0, 2, value=1.0, step=0.05, label="Control strength")
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="generate")
                stop = gr.Button("Cancel", elem_id="cancel-generate")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Result", elem_id="result", columns=2)
            controls = gr.Gallery(label="Control image used", columns=2)
            files = gr.File(label="PNG files (parameters embedded)", file_count="multiple", elem_id="pngs")
            params = gr.JSON(label="Parameters")
    inputs = [prompt, negative, height, width, n, seed, random_seed, steps, guidance, shift, dsteps, dguidance,
              sampler, variation, init, strength, run, lora, tokens, cnet, control_image, mask, cstrength]

    @job_event(app.sessions)
    def run_generate(job, prompt, negative, height, width, n, seed, random_seed, steps, guidance, shift, dsteps,
                     dguidance, sampler, variation, init, strength, run, lora, tokens, cnet, control_image, mask,
                     cstrength, progress=gr.Progress()):
        req = GenerateRequest(
            prompt or "", negative or "", int(height), int(width), int(n), None if random_seed else int(seed or 0),
            int(steps), float(guidance), float(shift), int(dsteps), float(dguidance), sampler, variation, init,
            float(strength), run, list(lora or []), tokens or "", cnet, control_image, _mask_of(mask),
            float(cstrength))
        out = generate(req, app.models, app.config, job, app.controlnets, _reporter(progress))
        caption = f"seed {out['parameters']['seed']}"
        return ([(str(p), caption) for p in out["files"]], [str(p) for p in out["control"]],
                [str(p) for p in out["files"]], out["parameters"])

    event = go.click(run_generate, inputs, [gallery, controls, files, params], api_name="generate",
                     concurrency_id=SLOT, concurrency_limit=1)
    stop.click(cancel_event(app.sessions), None, None, cancels=[event], api_name="cancel_generate", queue=False)


def _mask_of(editor) -> np.ndarray | None:
    """The painted area of a Gradio ImageMask value (its layers' alpha) as an (H,W) bool array, or None."""
    if not isinstance(editor, dict) or not editor.get("layers"):
        return None
    alpha = [np.asarray(layer)[..., -1] > 0 for layer in editor["layers"] if np.asarray(layer).ndim == 3]
    return np.logical_or.reduce(alpha) if alpha else None


def _reconstruct_tab(gr, app: App):
    decoders = list(app.decoders)
    tuned = [label for label, c in app.decoders.items() if c.path is not None]
    bases = [label for label in decoders if label not in tuned]
    with gr.Row():
        with gr.Column(scale=2):
            images = gr.File(label="Images", file_count="multiple", type="filepath", elem_id="recon-images")
            size = gr.Slider(64, 1024, value=512, step=64, label="Short side (pixels, then cropped to 64s)")
            seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
            with gr.Row():
                b1 = gr.Dropdown(decoders, value=bases[0], label="Decoder 1: Stage B")
                s1 = gr.Slider(1, 40, value=10, step=1, label="Decoder 1: steps")
            two = gr.Checkbox(value=False, label="Compare with a second decoder")
            with gr.Row():
                b2 = gr.Dropdown(decoders, value=tuned[0] if tuned else bases[-1], label="Decoder 2: Stage B")
                s2 = gr.Slider(1, 40, value=20, step=1, label="Decoder 2: steps")
            with gr.Row():
                go = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct")
                stop = gr.Button("Cancel", elem_id="cancel-reconstruct")
        with gr.Column(scale=3):
            grids = gr.Gallery(label="original | reconstruction | error heat-map", columns=1, elem_id="recon-grids")
            table = gr.Dataframe(headers=["image", "decoder", "PSNR", "SSIM", "LPIPS"], label="Metrics",
                                 elem_id="recon-table")

    @job_event(app.sessions)
    def run(job, images, size, seed, b1, s1, two, b2, s2, progress=gr.Progress()):
        decoders = [Decoder(b1, int(s1))] + ([Decoder(b2, int(s2))] if two else [])
        shown, rows = reconstruct(list(images or []), decoders, app.models, app.config, job, size=int(size),
                                  seed=int(seed or 0), report=_reporter(progress))
        return [(str(p), c) for p, c in shown], rows

    event = go.click(run, [images, size, seed, b1, s1, two, b2, s2], [grids, table], api_name="reconstruct",
                     concurrency_id=SLOT, concurrency_limit=1)
    stop.click(cancel_event(app.sessions), None, None, cancels=[event], api_name="cancel_reconstruct", queue=False)


def _stores_tab(gr, app: App):
    labels = list(app.config.stores)
    with gr.Row():
        store = gr.Dropdown(labels, value=labels[0] if labels else None, label="Store (--store)", elem_id="store")
        open_btn = gr.Button("Open", variant="primary", elem_id="open-store")
    info = gr.Textbox(label="Counts, statistics, skip reasons", lines=12, elem_id="store-info")
    skips = gr.Dataframe(headers=["group", "row", "key", "skip reason"], label="Skipped samples (when encoded)",
                         elem_id="store-skips")
    with gr.Row():
        prev_btn = gr.Button("◀ Previous page", elem_id="prev-page")
        number = gr.Number(value=1, precision=0, label="Page", minimum=1, elem_id="page-number")
        next_btn = gr.Button("Next page ▶", elem_id="next-page")
    grid = gr.Gallery(label=f"Previewer decodes ({PAGE} per page): index · key · caption", columns=6,
                      elem_id="store-grid")
    with gr.Row():
        sample = gr.Number(value=0, precision=0, minimum=0, label="Sample index")
        decode_btn = gr.Button("Full decode (Stage B + A)", elem_id="decode-sample")
    full = gr.Image(label="Full decode", type="pil", elem_id="full-decode")
    caption = gr.Textbox(label="Key and caption")

    @job_event(app.sessions)
    def open_store(job, label):
        idx = app.index(label)
        text, skipped = report(idx.store.path)
        return text + f"\n\n{len(idx)} usable samples, {idx.pages} pages", skipped, 1, page(idx, 0, app.models)

    @job_event(app.sessions)
    def show_page(job, label, number, step):
        idx = app.index(label)
        k = min(max(1, int(number or 1) + int(step)), idx.pages)
        return k, page(idx, k - 1, app.models)

    @job_event(app.sessions)
    def decode(job, label, i):
        img, key, cap = full_decode(app.index(label), int(i or 0), app.models)
        return img, f"{key}: {cap}"

    common = {"concurrency_id": SLOT, "concurrency_limit": 1}
    open_btn.click(open_store, [store], [info, skips, number, grid], api_name="open_store", **common)
    prev_btn.click(functools.partial(show_page, step=-1), [store, number], [number, grid], api_name="previous_page",
                   **common)
    next_btn.click(functools.partial(show_page, step=1), [store, number], [number, grid], api_name="next_page",
                   **common)
    number.submit(functools.partial(show_page, step=0), [store, number], [number, grid], api_name="store_page",
                  **common)
    decode_btn.click(decode, [store, sample], [full, caption], api_name="decode_sample", **common)

    def picked(number, evt):
        return (int(number or 1) - 1) * PAGE + int(evt.index)

    picked.__annotations__ = {"evt": gr.SelectData}  # Gradio passes the click by this annotation (gr is local)

    grid.select(picked, [number], [sample], api_name=False).then(decode, [store, sample], [full, caption],
                                                                 api_name=False, **common)


def build_app(config: AppConfig, controlnets: dict[str, Path] | None = None):
    """The Gradio Blocks of the app (not launched): ``build_app(cfg).launch(...)`` or :func:`launch`."""
    gr = gradio()
    app = App(config, controlnets)
    with gr.Blocks(title="cascadekit") as demo:
        if app.models.tiny:
            gr.HTML(f'<div id="tiny-banner" style="background:#c00;color:#fff;padding:.6em;font-weight:bold">'
                    f"{BANNER}</div>")
        gr.Markdown("# cascadekit")
        with gr.Tab("Generate", id="generate-tab"):
            _generate_tab(gr, app)
        with gr.Tab("Reconstruct", id="reconstruct-tab"):
            _reconstruct_tab(gr, app)
        with gr.Tab("Stores", id="stores-tab"):
            _stores_tab(gr, app)
    demo.queue(max_size=config.queue_size, default_concurrency_limit=1)
    demo.cascadekit = app
    return demo


def launch_options(host: str, port: int, config: AppConfig) -> dict:
    """The keywords of ``Blocks.launch``: no share link, uploads capped, errors shown as messages only."""
    return {"server_name": host, "server_port": port, "share": False, "max_file_size": config.max_upload_bytes,
            "show_error": False, "allowed_paths": [str(config.work_dir)], "footer_links": ["api"]}


@click.command("app")
@click.option("--weights", default=None, help="Weights folder / diffusers snapshot / hub id (default: as `sample`; "
                                              "the tiny random set, with a banner, when none is found).")
@click.option("--store", "stores", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="A latent store the Stores tab may show (repeatable).")
@click.option("--run", "runs", multiple=True, type=click.Path(exists=True),
              help="A training run / checkpoint (or Stage C file) whose weights the app may use (repeatable): a Stage "
                   "C run in Generate, a Stage B run as a decoder in Reconstruct; with EMA weights also 'RUN (ema)'.")
@click.option("--stage-b-weights", "stage_b_weights", multiple=True, type=click.Path(exists=True),
              help="A fine-tuned Stage B (run, RUN/checkpoints/step_N or .safetensors file) Reconstruct may compare "
                   "with the Stage B of --weights (repeatable).")
@click.option("--controlnet", "controlnets", multiple=True, type=click.Path(exists=True),
              help="An official ControlNet file (canny / inpainting / sr) Generate may use (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but 127.0.0.1 / localhost exposes the app to the network.")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
@click.option("--queue-size", default=4, show_default=True, type=COUNT,
              help="Jobs that may wait behind the running one; more are refused as busy.")
@click.option("--max-upload-mb", default=20, show_default=True, type=COUNT, help="Largest upload (MB).")
@click.option("--device", default=None, type=DEVICE, help="cpu, cuda, cuda:1 ... (default: cuda if available).")
@click.option("--dtype", default=None, type=click.Choice(["fp32", "bf16"]),
              help="Precision (default: bf16 on CUDA, fp32 on CPU).")
@reports_user_errors
def app(weights, stores, runs, stage_b_weights, controlnets, host, port, queue_size, max_upload_mb, device, dtype):
    """Start the local web app (Generate, Reconstruct, Stores) on http://HOST:PORT."""
    gradio()  # a missing optional extra fails here, before any weights load
    dev = pick_device(device)
    config = AppConfig(weights=weights, stores=labelled(stores), runs=labelled(runs),
                       stage_b_weights=labelled(stage_b_weights), device=str(dev),
                       dtype=default_dtype(dtype, dev), queue_size=queue_size, max_upload_bytes=max_upload_mb << 20,
                       work_dir=Path(tempfile.mkdtemp(prefix="cascadekit-app-")))
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: --host {host} makes the app reachable from other machines; it has no login", err=True)
    demo = build_app(config, labelled(controlnets))
    if demo.cascadekit.models.tiny:
        click.echo(f"note: {BANNER}", err=True)
    demo.launch(**launch_options(host, port, config))
