#!/usr/bin/env bash
# Download, on a machine that reaches PyPI, exactly the wheels that benchmarks/gpu_suite.py needs and the
# nvidia-h200 image lacks (image list: benchmarks/device/image_packages.txt), for CPython 3.12 manylinux
# x86_64, into .whl/ at the repository root (.whl/ is git-ignored by .gitignore, so it travels only when a
# device `run` names it in `carry`). One version of each, --no-deps: every dependency is named below.
#
#   benchmarks/device/prepare_wheels.sh              # -> .whl/ (cp312, the device's Python)
#   PYVER=3.11 benchmarks/device/prepare_wheels.sh /tmp/whl311   # same versions for another Python (simulation)
#
# Why each one (the image has torch, torchvision, numpy, pillow, safetensors, huggingface-hub, pyyaml,
# packaging, typing-extensions, regex, requests, filelock, zipp, click, fsspec, ...):
#   zarr, donfig, numcodecs, google-crc32c  the latent store that build_latent_dataset writes (encode part)
#   diffusers, importlib_metadata, lazy-importer  the StableCascadeUNet the forward part compares against
# The versions are the ones the project's venv runs its tests with (diffusers 0.42.1 needs
# huggingface-hub >= 1.32 and safetensors >= 0.8: the image has 1.33.0 and 0.8.0).
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${1:-.whl}
PYVER=${PYVER:-3.12}
WHEELS=(zarr==3.1.6 donfig==0.8.1.post1 numcodecs==0.16.6 google-crc32c==1.9.0
        diffusers==0.42.1 importlib_metadata==10.2.0 lazy-importer==0.1.0)
LIMIT_MIB=40

if [ "$DEST" = .whl ] && ! git check-ignore -q .whl/; then
  echo "prepare_wheels: .whl/ is not git-ignored here; add '/.whl/' to .git/info/exclude first" >&2; exit 2
fi
mkdir -p "$DEST"
rm -f "$DEST"/*.whl   # one version of each: two stop the whole install
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${WHEELS[@]}" 2> >(grep -v "is ignored" >&2)

n=$(ls "$DEST"/*.whl | wc -l)
[ "$n" -eq "${#WHEELS[@]}" ] || { echo "prepare_wheels: $n wheels in $DEST, expected ${#WHEELS[@]}" >&2; exit 1; }
wheels_b=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree_b=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked_b=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
ls -l "$DEST"/*.whl
echo "wheels $((wheels_b / 1024)) KiB; tracked tree $((tree_b / 1024)) KiB;" \
     "untracked-not-ignored ${untracked_b:-0} B;" \
     "total that travels $(((wheels_b + tree_b + ${untracked_b:-0}) / 1048576)) MiB (limit 64 MiB)"
[ "$wheels_b" -lt $((LIMIT_MIB * 1048576)) ] || { echo "prepare_wheels: wheels exceed ${LIMIT_MIB} MiB" >&2; exit 1; }
