#!/usr/bin/env bash
# One set-up path for everything (README, CI, users): create ./.venv if missing and install swtasks in
# editable mode with the extras of a profile. A second run with everything present only checks a stamp and
# returns in seconds.
#
#   scripts/setup_env.sh demo   core + the `cls` extra (Lightning): minutes on a fresh machine (make demo)
#   scripts/setup_env.sh full   everything: + `mm` (mmcv built from source once and cached) + `test` (make test)
#
# A full environment also serves the demo profile.
set -euo pipefail

PROFILE="${1:-full}"
case "$PROFILE" in
  demo) EXTRAS="cls" ;;
  full) EXTRAS="cls,mm,test" ;;
  *) echo "usage: $0 [demo|full]" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${SWTASKS_VENV:-$ROOT/.venv}"
PY_BOOT="${PYTHON:-python3}"
CACHE="${SWTASKS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/swtasks}"

TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
SETUPTOOLS="setuptools>=77,<81"  # torch 2.14 needs >= 77; mmengine 0.10.7 needs pkg_resources (gone in 81)

log() { printf '[setup] %s\n' "$*" >&2; }

# The stamp covers everything that decides what is installed; if it matches, nothing to do.
stamp_for() {
  { cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup_env.sh"; echo "$VENV $1"; } | sha256sum | cut -d' ' -f1
}
STAMP="$VENV/.swtasks-setup-stamp"
if [[ -x "$VENV/bin/python" && -f "$STAMP" ]]; then
  have="$(cat "$STAMP")"
  if [[ "$have" == "$(stamp_for "$PROFILE")" || "$have" == "$(stamp_for full)" ]]; then
    log "environment up to date ($VENV, profile $PROFILE)"
    exit 0
  fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtual environment $VENV"
  "$PY_BOOT" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip wheel

if ! "$PY" -c "import torch, torchvision, sys; sys.exit(0 if (torch.__version__.split('+')[0], torchvision.__version__.split('+')[0]) == ('$TORCH_VERSION', '$TORCHVISION_VERSION') else 1)" 2>/dev/null; then
  log "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION (large; about 2 minutes from a local wheel)"
  "${PIP[@]}" install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

if [[ "$PROFILE" == demo ]]; then
  log "installing swtasks (editable) with the extra [$EXTRAS]"
  "${PIP[@]}" install -q -e "$ROOT[$EXTRAS]"
  "$PY" -c "import swtasks; print('[setup] swtasks', swtasks.__version__, 'ready (profile demo)')"
  stamp_for demo > "$STAMP"
  exit 0
fi

# ---- mmcv: no wheel exists for torch 2.14; build it from the sdist once and cache the wheel -----
have_mmcv() { "$PY" -c "import mmcv, mmcv.ops, sys; sys.exit(0 if mmcv.__version__ == '$MMCV_VERSION' else 1)" 2>/dev/null; }
if ! have_mmcv; then
  flavour=cpu
  if [[ "${SWTASKS_MMCV_CUDA:-auto}" != 0 ]] && command -v nvcc >/dev/null 2>&1 \
     && "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    flavour="cu$("$PY" -c 'import torch; print(torch.version.cuda.replace(".", ""))')"
  fi
  key="mmcv-${MMCV_VERSION}_torch-${TORCH_VERSION}_py-$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')_${flavour}"
  wheel_dir="$CACHE/wheels/$key"
  wheel="$(ls "$wheel_dir"/mmcv-*.whl 2>/dev/null | head -1 || true)"
  if [[ -z "$wheel" ]]; then
    build="$(mktemp -d "${TMPDIR:-/tmp}/swtasks-mmcv-build.XXXXXX")"
    log "building mmcv $MMCV_VERSION ($flavour ops) from source: no wheel exists for torch $TORCH_VERSION."
    log "this happens once per machine and takes about 25 minutes on 2 idle cores (longer on a busy machine); the wheel is cached in $wheel_dir"
    log "build log: $build/build.log"
    # mmcv's setup.py was written for the setuptools of 2023 (pkg_resources and friends): build with
    # setuptools<70, then put back the range torch (>= 77) and mmengine (pkg_resources, < 81) need.
    # (pip warns there that torch wants setuptools>=77: expected; it is restored right after the build)
    "${PIP[@]}" install -q "setuptools<70" ninja >"$build/setuptools.log" 2>&1 \
      || { cat "$build/setuptools.log" >&2; exit 1; }
    "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$build"
    tar -xzf "$build"/mmcv-"$MMCV_VERSION".tar.gz -C "$build"
    src="$build/mmcv-$MMCV_VERSION"
    # torch >= 2.10 headers require C++20; mmcv 2.1.0 hard-codes c++14/c++17.
    sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' "$src/setup.py"
    force_cuda=0; [[ "$flavour" != cpu ]] && force_cuda=1
    start=$(date +%s)
    if ! (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=$force_cuda MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
          "${PIP[@]}" wheel --no-build-isolation --no-deps -w "$build/dist" . >"$build/build.log" 2>&1); then
      grep -n -m 20 -E 'error|Error' "$build/build.log" >&2 || true
      tail -n 40 "$build/build.log" >&2
      "${PIP[@]}" install -q "$SETUPTOOLS"
      log "mmcv build FAILED (full log: $build/build.log)."
      log "See docs/install.md, section 'Troubleshooting: the mmcv build'."
      exit 1
    fi
    "${PIP[@]}" install -q "$SETUPTOOLS"
    log "mmcv built in $(( $(date +%s) - start )) s"
    mkdir -p "$wheel_dir"
    # Copy then rename, so a crash never leaves a half-written wheel in the cache.
    built="$(ls "$build"/dist/mmcv-*.whl | head -1)"
    cp "$built" "$wheel_dir/.partial" && mv "$wheel_dir/.partial" "$wheel_dir/$(basename "$built")"
    wheel="$wheel_dir/$(basename "$built")"
    rm -rf "$build"
  else
    log "reusing cached mmcv wheel $wheel"
  fi
  "${PIP[@]}" install -q --no-deps "$wheel"
  # mmcv's own runtime requirements (no-deps above keeps pip from trying to rebuild it)
  "${PIP[@]}" install -q addict mmengine packaging Pillow pyyaml yapf opencv-python-headless
fi

# An interrupted build can leave the old setuptools behind; torch needs >= 77 and mmengine's config
# loader (`_base_ = 'mmdet::...'`) needs pkg_resources, which setuptools 81 removed.
if ! "$PY" -c "import pkg_resources, setuptools, sys; sys.exit(not 77 <= int(setuptools.__version__.split('.')[0]) < 81)" 2>/dev/null; then
  "${PIP[@]}" install -q "$SETUPTOOLS"
fi

log "installing swtasks (editable) with the extras [$EXTRAS]"
"${PIP[@]}" install -q -e "$ROOT[$EXTRAS]"
"$PY" -c "import swtasks; print('[setup] swtasks', swtasks.__version__, 'ready (profile full)')"
stamp_for full > "$STAMP"
