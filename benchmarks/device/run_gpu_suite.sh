#!/usr/bin/env bash
# The GPU suite in one device call (issue 15): install the carried wheels, make cascadekit importable from
# the checkout without a network, print the machine, run benchmarks/gpu_suite.py under a wall-clock budget,
# leave the JSON and the log under $OUT (partial JSON survives a kill: it is rewritten after every step).
#
# Prepare here first (PyPI reachable): benchmarks/device/prepare_wheels.sh   (-> .whl/, ~16 MiB)
# Then the one call, with the device tool `run`:
#   command:   bash benchmarks/device/run_gpu_suite.sh
#   carry:     [".whl"]
#   timeout_s: 540
# The suite's own budget is 450 s (CK_BUDGET), each step capped (gpu_suite.STEP_CAPS); the command's hard
# stop here is CK_BUDGET + 45 s, so the call ends in < 9 min even if a step hangs. Results come back as
# $OUT/gpu_suite.json and $OUT/gpu_suite.log.
#
# Options: any argument is passed to gpu_suite.py (e.g. --no-compile, --parts forward,encode).
#   --dry-run            tiny configs on CPU (no GPU needed): checks that the carried wheels + the image's
#                        packages hold everything the suite imports (simulate_image.sh runs it that way)
# Environment: PYTHON (python3), CK_WHEELS (.whl), CK_SITE (/tmp/site), CK_BUDGET (450), OUT (./out/gpu_suite)
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
PY=${PYTHON:-python3}
WHEELS=${CK_WHEELS:-.whl}
SITE=${CK_SITE:-/tmp/site}
BUDGET=${CK_BUDGET:-450}
OUT=${OUT:-$REPO/out/gpu_suite}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

main() {
echo "== run_gpu_suite $(date -u +%FT%TZ) args: $*"

# 1. the carried wheels (the README's recipe), then cascadekit from this checkout: a namespace shim whose
#    five sub-packages are links to the source folders (no build, no network, no write into the checkout)
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
  || { echo "run_gpu_suite: installing the wheels from $WHEELS failed (run prepare_wheels.sh; carry .whl)"; return 3; }
SHIM=$(mktemp -d /tmp/cascadekit-src.XXXX)
trap 'rm -rf "$SHIM"' RETURN
mkdir -p "$SHIM/cascadekit"
for d in codec generator datasets metrics cli; do ln -s "$REPO/$d" "$SHIM/cascadekit/$d"; done
export PYTHONPATH="$SITE:$SHIM${PYTHONPATH:+:$PYTHONPATH}"

# 2. the machine, and every import the suite needs (fails here, in seconds, if one is missing)
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "(no nvidia-smi)"
echo "cpus $(nproc), load $(cat /proc/loadavg)"
"$PY" - <<'PY' || { echo "run_gpu_suite: an import failed (see above)"; return 4; }
import importlib, platform, torch, torchvision
print(f"python {platform.python_version()}, torch {torch.__version__} (cuda {torch.version.cuda}), "
      f"torchvision {torchvision.__version__}, cuda available {torch.cuda.is_available()}")
for m in ("numpy", "PIL", "safetensors", "zarr", "numcodecs", "google_crc32c", "triton",
          "cascadekit.datasets.builder", "cascadekit.datasets.cuda_jpeg", "cascadekit.generator"):
    mod = importlib.import_module(m)
    print(f"  {m} {getattr(mod, '__version__', '')} ({getattr(mod, '__file__', '?')})")
try:  # optional: the suite skips the comparison without it (a recent diffusers does not import on torch 2.4)
    import diffusers
    from diffusers import StableCascadeUNet  # noqa: F401
    print(f"  diffusers {diffusers.__version__}")
except Exception as e:  # noqa: BLE001
    print(f"  WARNING: diffusers not usable ({type(e).__name__}: {e}): no comparison against StableCascadeUNet")
PY

# 3. the suite, hard-stopped shortly after its own budget
timeout -k 10 $((BUDGET + 45)) "$PY" -u benchmarks/gpu_suite.py --budget "$BUDGET" --out "$OUT/gpu_suite.json" "$@"
rc=$?
echo "== gpu_suite exit $rc at $(date -u +%FT%TZ); results: $OUT/gpu_suite.json"
return $rc
}

main "$@" 2>&1 | tee -a "$OUT/gpu_suite.log"
exit "${PIPESTATUS[0]}"
