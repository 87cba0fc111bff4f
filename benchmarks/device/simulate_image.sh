#!/usr/bin/env bash
# The device call, simulated on this CPU machine: a fresh venv that holds only the nvidia-h200 image's
# packages (image_packages.txt; linked from existing venvs by image_env.py, torch from TORCH_SITE), the same
# wheel versions as prepare_wheels.sh (for this Python), installed --no-index through run_gpu_suite.sh's
# own install path, then `gpu_suite.py --dry-run` (tiny configs on CPU) with the remaining arguments.
#
#   benchmarks/device/simulate_image.sh /tmp/v24/lib/python3.11/site-packages --no-compile   # torch 2.4.1
#   benchmarks/device/simulate_image.sh .venv/lib/python3.11/site-packages                   # the venv's torch
#
# Differences from the device that remain: this Python (the linked packages' one, 3.11 here; the device has
# 3.12, so its wheels are the cp312 builds of the same versions), the package versions of this machine's
# venvs, and the CPU. Environment: SIM (/tmp/cascadekit-image-sim), PYBASE (python3.11), CK_BUDGET (900).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
TORCH_SITE=$(cd "$1" && pwd); shift
SIM=${SIM:-/tmp/cascadekit-image-sim}
PYBASE=${PYBASE:-python3.11}
rm -rf "$SIM"
"$PYBASE" -m venv "$SIM/venv"
"$SIM/venv/bin/python" "$REPO/benchmarks/device/image_env.py" --packages "$REPO/benchmarks/device/image_packages.txt" \
  --to "$SIM/image" "$TORCH_SITE" "$REPO"/.venv/lib/python3*/site-packages
PTH='import site, sys; open(site.getsitepackages()[0] + "/zz_image.pth", "w").write(sys.argv[1])'
"$SIM/venv/bin/python" -c "$PTH" "$SIM/image"  # the image's packages on this venv's path
PYVER=$("$SIM/venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
  "$REPO/benchmarks/device/prepare_wheels.sh" "$SIM/whl"
env -u PYTHONPATH PYTHON="$SIM/venv/bin/python" CK_WHEELS="$SIM/whl" CK_SITE="$SIM/site" OUT="$SIM/out" \
  CK_BUDGET="${CK_BUDGET:-900}" "$REPO/benchmarks/device/run_gpu_suite.sh" --dry-run "$@"
