#!/usr/bin/env bash
# Ours vs bare vLLM on NVIDIA GPUs, offline, in under 10 minutes: one self-contained script.
#
# On a machine with >= 1 NVIDIA GPU and no internet it
#   1. makes a venv from local wheels (skipped when it is up to date, or with --skip-install),
#      checks the GPUs (nvidia-smi, torch.cuda) and prints their facts;
#   2. builds a random-weight checkpoint with the real Qwen2-VL-2B-Instruct shapes (SHAPE=
#      qwen2-vl-7b for 7B) into $WORK/models (`qvq model build-random`; kept for later runs);
#   3. writes a GPU serving config for it ($WORK/gpu-$SHAPE.yaml, from configs/qvq-72b.yaml:
#      TP 1, max_model_len 8192, CUDA graphs on, CPU replicas sized to this machine's cores);
#   4. runs `python -m loadtest.compare --servers ours,bare-vllm`: our app and vLLM's own OpenAI
#      server in turn, same engine settings, one distinct large photo per request (2048x1536,
#      4000x3000; text-only on request) as open-loop load (8 req/s) and closed-loop load at
#      high concurrency (64);
#   5. prints ours/bare ratios and where the JSON and the PNG plots went (loadtest/results/).
#
# ---------------------------------------------------------------------------------------------
# Prepare the wheels once, on a connected Linux machine with the GPU machine's CPU architecture
# (x86_64) and Python 3.11, from a checkout of this repository:
#
#   python3.11 -m venv /tmp/wheel-env && /tmp/wheel-env/bin/pip install -U pip
#   /tmp/wheel-env/bin/pip download -d wheels "setuptools>=68" wheel
#   /tmp/wheel-env/bin/pip wheel -w wheels ".[gpu,test]"
#
# `pip wheel` resolves the gpu and test extras of pyproject.toml -- vllm==0.32.0 with the torch,
# torchvision and nvidia-* (CUDA runtime) wheels it pins, ray[serve]==2.60.0, everything else --
# and turns any sdist into a wheel (~6 GB in all). Torch comes from PyPI, whose Linux wheels are
# the CUDA build vLLM's PyPI wheel is compiled against: do not mix in a torch from another CUDA
# index. No Linux Python 3.11 at hand: the same inside Docker on any connected machine:
#
#   docker run --rm -v "$PWD":/src -w /src python:3.11-bookworm sh -c \
#     'pip download -d wheels "setuptools>=68" wheel && pip wheel -w wheels ".[gpu,test]"'
#
# The GPU driver must support torch's CUDA version (`nvidia-smi` shows "CUDA Version" >= the
# torch.version.cuda this script prints; it warns when not).
#
# Copy the repository with the wheels inside it (or anywhere: WHEELS=/path) to the GPU machine:
#
#   tar czf qvq-gpu.tgz --exclude=.venv --exclude=.venv-gpu --exclude=.qvq .
#   scp qvq-gpu.tgz gpu-host: && ssh gpu-host 'mkdir -p qvq && tar xzf qvq-gpu.tgz -C qvq'
#
# Run it there:                   cd qvq && bash loadtest/gpu/run.sh
# Check it anywhere (no CUDA):    VENV=.venv bash loadtest/gpu/run.sh --dry-run
#   The dry run validates the settings and the wheel directory (when present), writes the GPU
#   config and validates it (`qvq config validate`), checks `loadtest.compare` takes every flag
#   used, builds the checkpoint's configs and tokenizer without weights, prints every command a
#   real run would run, and exits 0.
#
# Settings (environment; relative paths are relative to the repository root):
#   VENV=.venv-gpu (a dry run without it uses the active venv, else .venv)  WHEELS=./wheels
#   PYTHON=python3.11  SHAPE=qwen2-vl-2b|qwen2-vl-7b|tiny
#   WORK=.qvq/gpu  TP=1  CPUS=$(nproc)  BUDGET_S=600
#   SCENARIOS=photo-2048x1536,photo-4000x3000  RATES=8  CONCURRENCY=64  DURATION_S=10
#   MAX_TOKENS=32  OUT=loadtest/results/compare-gpu-SHAPE-STAMP.json  COMPARE_ARGS="" (extra flags)
#
# Time budget (10 minutes on a 16-core H100 box; the first run pays the install and the build):
#   step                                           first run      rerun
#   install from local wheels                      60-120 s       ~5 s (stamp)
#   build the 2B checkpoint (7B: 60-120 s), and    20-40 s        0 (kept)
#     meanwhile the grid's photos on all cores     (15-30 s)      0 (cached)
#   ours: Ray + Serve + vLLM load, compile, graphs 60-120 s       45-90 s
#   bare vLLM start                                45-90 s        30-60 s
#   measurement: 2 photo sizes x (rate 8/s for 10 s, 64 concurrent x 3) x 2 servers: 120-200 s
# Adding the text scenario (SCENARIOS=text,photo-2048x1536,photo-4000x3000) costs ~30 s: fits a
# rerun.
# Hard limit: every step runs under `timeout`; the benchmark gets what is left of BUDGET_S
# (minus time to stop its servers and print), and is refused when under 200 s are left (rerun:
# the venv, the checkpoint and the photos are kept, so the rerun fits).
set -Eeuo pipefail

usage() { sed -n '2,/^set -Eeuo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

DRY=0 SKIP_INSTALL=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --skip-install) SKIP_INSTALL=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$REPO/${1#./}" ;; esac; }

VENV=$(abspath "${VENV:-.venv-gpu}")
if [ "$DRY" = 1 ] && [ ! -x "$VENV/bin/python" ]; then
  # A dry run needs a venv with this project but no CUDA: the active one, else the CPU .venv.
  for candidate in "${VIRTUAL_ENV:-}" "$REPO/.venv"; do
    if [ -n "$candidate" ] && [ -x "$candidate/bin/python" ]; then
      echo "dry run: no venv at $VENV, using $candidate"
      VENV=$candidate
      break
    fi
  done
fi
WHEELS=$(abspath "${WHEELS:-./wheels}")
PYTHON=${PYTHON:-python3.11}
SHAPE=${SHAPE:-qwen2-vl-2b}
WORK=$(abspath "${WORK:-.qvq/gpu}")
TP=${TP:-1}
CPUS=${CPUS:-$(nproc)}
BUDGET_S=${BUDGET_S:-600}
SCENARIOS=${SCENARIOS:-photo-2048x1536,photo-4000x3000}
RATES=${RATES:-8}
CONCURRENCY=${CONCURRENCY:-64}
DURATION_S=${DURATION_S:-10}
MAX_TOKENS=${MAX_TOKENS:-32}
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$(abspath "${OUT:-loadtest/results/compare-gpu-$SHAPE-$STAMP.json}")
read -r -a EXTRA <<< "${COMPARE_ARGS:-}"
PY="$VENV/bin/python"
MODEL_DIR="$WORK/models/$SHAPE"
CONFIG="$WORK/gpu-$SHAPE.yaml"
MIN_BENCH_S=200  # the benchmark's least useful time: two server starts and a few points
STOP_S=75        # after the benchmark's deadline: SIGINT lets it stop both servers (<= 60 s)

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
  RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '\n== [%3ds] %s\n' "$SECONDS" "$*"; }
die() { echo "run.sh: $*" >&2; exit 1; }
# Print a command the way a shell takes it; run it unless this is a dry run.
show() {
  local w words=()
  for w in "$@"; do
    if [[ $w =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      words+=("$w")
    else
      words+=("'${w//\'/\'\\\'\'}'")
    fi
  done
  echo "+ ${words[*]}"
}
run() { show "$@"; if [ "$DRY" = 0 ]; then "$@"; fi; }   # needs the GPU machine
always() { show "$@"; "$@"; }                               # safe anywhere: runs in dry runs
trap 'echo "run.sh: failed after ${SECONDS}s at line $LINENO: $BASH_COMMAND" >&2' ERR

# --- 0. settings ---------------------------------------------------------------------------
validate_settings() {
  local s scenarios
  case "$SHAPE" in tiny|qwen2-vl-2b|qwen2-vl-7b) ;; *)
    die "SHAPE=$SHAPE: choose qwen2-vl-2b, qwen2-vl-7b or tiny" ;; esac
  [[ $TP =~ ^[1-9][0-9]*$ ]] || die "TP=$TP: a positive integer (GPUs per engine)"
  [[ $CPUS =~ ^[1-9][0-9]*$ ]] || die "CPUS=$CPUS: a positive integer"
  [[ $BUDGET_S =~ ^[1-9][0-9]*$ ]] || die "BUDGET_S=$BUDGET_S: seconds, a positive integer"
  [[ $RATES =~ ^[0-9]+(\.[0-9]+)?(,[0-9]+(\.[0-9]+)?)*$ ]] || die "RATES=$RATES: e.g. 4,8"
  [[ $CONCURRENCY =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "CONCURRENCY=$CONCURRENCY: e.g. 16,64"
  [[ $DURATION_S =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "DURATION_S=$DURATION_S: seconds"
  [[ $MAX_TOKENS =~ ^[1-9][0-9]*$ ]] || die "MAX_TOKENS=$MAX_TOKENS: a positive integer"
  IFS=, read -r -a scenarios <<< "$SCENARIOS"
  [ "${#scenarios[@]}" -gt 0 ] || die "SCENARIOS is empty"
  for s in "${scenarios[@]}"; do
    case "$s" in text|photo-1024|photo-2048x1536|photo-4000x3000) ;; *)
      die "SCENARIOS: unknown $s (text, photo-1024, photo-2048x1536, photo-4000x3000)" ;; esac
  done
  echo "shape $SHAPE, TP $TP, $CPUS CPUs, budget ${BUDGET_S}s; scenarios $SCENARIOS," \
       "rates $RATES/s, concurrency $CONCURRENCY, ${DURATION_S}s per rate, $MAX_TOKENS tokens"
  echo "venv $VENV; wheels $WHEELS; work $WORK"
}

# --- 1. wheels, venv, GPUs -----------------------------------------------------------------
check_wheels() {
  local pattern missing=() foreign=() wheel other_arch=aarch64
  if [ ! -d "$WHEELS" ]; then
    echo "no wheel directory at $WHEELS (see the top of this script to prepare one)"
    return 1
  fi
  for pattern in 'vllm-0.32.0-*.whl' 'ray-2.60.0-*.whl' 'torch-*.whl' 'torchvision-*.whl' \
                 'transformers-*.whl' 'setuptools-*.whl' 'pydantic-*.whl' 'matplotlib-*.whl'; do
    compgen -G "$WHEELS/$pattern" > /dev/null || missing+=("$pattern")
  done
  # Wheels for another CPython, OS or architecture: prepared on the wrong machine.
  # (cp38-abi3 and py3-none wheels are fine; cp312-cp312 is not.)
  [ "$(uname -m)" != aarch64 ] || other_arch=x86_64
  for wheel in "$WHEELS"/*.whl; do
    wheel=${wheel##*/}
    if [[ $wheel =~ -cp3([0-9]|1[02-9])-cp3|macosx|win_amd64|win32|$other_arch ]]; then
      foreign+=("$wheel")
    fi
  done
  if [ "${#missing[@]}" -gt 0 ] || [ "${#foreign[@]}" -gt 0 ]; then
    [ "${#missing[@]}" -eq 0 ] || echo "wheels missing in $WHEELS: ${missing[*]}" >&2
    [ "${#foreign[@]}" -eq 0 ] || echo "wheels for another Python/platform: ${foreign[*]}" >&2
    return 2
  fi
  echo "wheels ok: $(compgen -G "$WHEELS/*.whl" | wc -l) in $WHEELS"
}

install() {
  local want stamp="$VENV/.qvq-gpu-installed"
  want=$({ cat pyproject.toml; ls "$WHEELS" 2> /dev/null || true; } | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "venv $VENV is up to date"
    return
  fi
  if ! command -v "$PYTHON" > /dev/null && [ ! -x "$PY" ]; then
    [ "$DRY" = 1 ] || die "$PYTHON not found (set PYTHON=/path/to/python3.11)"
    echo "(no $PYTHON here: fine for a dry run)"
  fi
  [ -x "$PY" ] || run "$PYTHON" -m venv "$VENV"
  run timeout 300 "$PY" -m pip install --no-index --find-links "$WHEELS" -e ".[gpu,test]"
  [ "$DRY" = 1 ] || echo "$want" > "$stamp"
}

check_python() {
  [ -x "$PY" ] || die "no Python at $PY (VENV=$VENV); a dry run needs VENV=<venv with this project>"
  "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || die "$PY is not Python 3.11"
  "$PY" -c 'import serving.cli, loadtest.servers' || die "$VENV lacks this project (install it)"
  # Every flag this script passes must exist in the benchmark's CLI (it is developed apart).
  local help flag
  help=$("$PY" -m loadtest.compare --help) || die "python -m loadtest.compare --help failed"
  for flag in --config --model-dir --servers --scenarios --rates --concurrency --duration-s \
              --max-tokens --out; do
    grep -q -- "$flag" <<< "$help" || die "loadtest.compare has no $flag flag"
  done
  echo "python ok: $("$PY" -V), serving and loadtest.compare (every flag used) importable"
}

gpu_facts() {
  show nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
  if ! command -v nvidia-smi > /dev/null; then
    [ "$DRY" = 1 ] && { echo "(no nvidia-smi here: fine for a dry run)"; return; }
    die "nvidia-smi not found: this needs an NVIDIA GPU and its driver"
  fi
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader \
    || { [ "$DRY" = 1 ] && return; die "nvidia-smi failed"; }
  [ "$DRY" = 1 ] && return
  local gpus driver_cuda
  gpus=$(nvidia-smi -L | grep -c '^GPU ' || true)
  [ "$gpus" -ge "$TP" ] || die "TP=$TP but $gpus GPU(s)"
  driver_cuda=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -1)
  "$PY" - "$driver_cuda" <<'EOF'
import sys

import ray
import torch
import vllm

driver = sys.argv[1]
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), vllm {vllm.__version__}, "
      f"ray {ray.__version__}; driver supports CUDA {driver or '?'}")
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device: a CPU-only torch, or a driver too old for it")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, sm {p.major}.{p.minor}, "
          f"{p.multi_processor_count} SMs")
def key(v):
    return tuple(int(x) for x in v.split(".")[:2])
if driver and torch.version.cuda and key(driver) < key(torch.version.cuda):
    print(f"warning: the driver supports CUDA {driver}, torch needs {torch.version.cuda}")
EOF
}

# --- 2. checkpoint -------------------------------------------------------------------------
build_model() {
  if [ "$DRY" = 1 ]; then
    show timeout 300 "$PY" -m serving.cli model build-random --shape "$SHAPE" --out "$MODEL_DIR"
    # The builder path without the weights (the tiny shape builds whole: seconds).
    local dry_dir="$WORK/dry-run/models/$SHAPE" no_weights=(--no-weights)
    [ "$SHAPE" = tiny ] && no_weights=()
    rm -rf "$dry_dir"  # always rebuilt: the point is to run the builder
    "$PY" -m serving.cli model build-random --shape "$SHAPE" --out "$dry_dir" \
      "${no_weights[@]}" > /dev/null
    "$PY" - "$dry_dir" <<'EOF'
import pathlib
import sys

from transformers import AutoConfig, AutoProcessor

out = pathlib.Path(sys.argv[1])
config = AutoConfig.from_pretrained(out)
text = config.get_text_config()
processor = AutoProcessor.from_pretrained(out)
assert max(processor.tokenizer.get_vocab().values()) < text.vocab_size
print(f"builder ok ({out}): {config.architectures[0]}, hidden {text.hidden_size}, "
      f"{text.num_hidden_layers} layers, vocab {text.vocab_size}, vision depth "
      f"{config.vision_config.depth}, tokenizer {len(processor.tokenizer)} tokens")
EOF
    return
  fi
  run timeout 300 "$PY" -m serving.cli model build-random --shape "$SHAPE" --out "$MODEL_DIR"
  du -sh "$MODEL_DIR"
}

# --- 3. serving config ---------------------------------------------------------------------
yaml_str() { printf "'%s'" "${1//\'/\'\'}"; }  # a YAML single-quoted scalar

write_config() {
  # CPU replicas sized to this machine. Replica counts are fixed (min = max): a run this short
  # would otherwise measure the autoscaler's upscale delay rather than the serving path.
  local routers router_cpus pre_cpus reserved pre
  if [ "$CPUS" -ge 8 ]; then
    routers=2 router_cpus=1 pre_cpus=2
  else
    routers=1 router_cpus=0.5 pre_cpus=1
  fi
  # Ray CPUs kept for the routers, the generator replica, its TP workers and the batch runner
  # (plus vLLM's engine process, which Ray does not count).
  reserved=$((routers + 1 + (TP > 1 ? TP : 0) + 1))
  pre=$(((CPUS - reserved) / pre_cpus))
  [ "$pre" -ge 1 ] || pre=1
  mkdir -p "$WORK"
  cat > "$CONFIG" <<EOF
# Written by loadtest/gpu/run.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ): $SHAPE (random weights),
# $CPUS CPUs, TP $TP. Derived from configs/qvq-72b.yaml. loadtest.compare starts our app with it
# (server.port replaced by a free port, auth off) and bare vLLM with its model and image settings.
model:
  path: $(yaml_str "$MODEL_DIR")
  served_name: $SHAPE-random
  dtype: bfloat16
  tensor_parallel_size: $TP
  max_model_len: 8192
  max_num_seqs: 128
  gpu_memory_utilization: 0.85
  enforce_eager: false
  enable_prefix_caching: true
  default_max_tokens: 256
  # No system prompt of ours: both servers render the chat template's own default, so both
  # prefill the same prompt (the benchmark sends none).
  default_system_prompt: null
image:
  min_pixels: 200704                     # 256 * 28 * 28, QVQ's model card
  max_pixels: 1003520                    # 1280 * 28 * 28
  max_images_per_request: 8
  max_image_bytes: 20971520
  max_source_pixels: 64000000
deployments:
  router:
    num_cpus: $router_cpus
    max_ongoing_requests: 1024
    autoscaling: {min_replicas: $routers, max_replicas: $routers}
  preprocessor:
    num_cpus: $pre_cpus
    max_ongoing_requests: 16
    autoscaling: {min_replicas: $pre, max_replicas: $pre, target_ongoing_requests: 4}
  generator:
    num_cpus: 1
    num_gpus_per_worker: 1
    max_ongoing_requests: 256
    autoscaling: {min_replicas: 1, max_replicas: 1}
auth:
  api_keys_env: null
storage:
  backend: local
  local: {root: $(yaml_str "$WORK/store")}
ray:
  object_store_memory_mib: 4096
server:
  host: 127.0.0.1
  port: 8000                             # replaced by a free port by the benchmark
# vLLM / torch.compile caches: the same directory bare vLLM uses (loadtest/servers.py puts its
# caches in <repo>/.qvq/cache), so the second server to start reuses the first one's compile.
data_dir: $(yaml_str "$REPO/.qvq")
EOF
  echo "wrote $CONFIG ($routers router(s) x $router_cpus CPU," \
       "$pre preprocessor(s) x $pre_cpus CPUs)"
  always "$PY" -m serving.cli config validate "$CONFIG"
}

# --- 4. benchmark --------------------------------------------------------------------------
prewarm_photos() {
  # loadtest.compare makes its photos one by one before starting the servers (~0.5 s per
  # 4000x3000 JPEG); make the same files (same seeds, same cache) on every core first. Best
  # effort: if the benchmark's plan changed, it makes what is missing itself.
  echo "+ timeout 120 $PY - <<EOF  # the grid's photos on $CPUS processes"
  [ "$DRY" = 0 ] || return 0
  timeout 120 "$PY" - "$SCENARIOS" "$RATES" "$CONCURRENCY" "$DURATION_S" "$CPUS" <<'EOF' \
    || echo "photo prewarm skipped; the benchmark makes its photos itself"
import argparse
import multiprocessing
import sys

from loadtest import compare

scenarios, rates, conc, duration, cpus = sys.argv[1:]
args = argparse.Namespace(scenarios=scenarios.split(","), duration_s=float(duration),
                          rates=[float(r) for r in rates.split(",")],
                          concurrency=[int(c) for c in conc.split(",")], per_worker=3)
cache = compare.ROOT / ".qvq" / "bench" / "photos"
jobs = [(p["scenario"], p["seed"] + i, cache) for p in compare.plan(args)
        if compare.SCENARIOS[p["scenario"]] for i in range(p["n"])]


def make(job):
    scenario, seed, cache = job
    compare.payloads(scenario, 1, seed, "m", 1, cache)


with multiprocessing.Pool(int(cpus)) as pool:
    pool.map(make, jobs, chunksize=4)
print(f"{len(jobs)} photos ready in {cache}")
EOF
}

benchmark() {
  local left=$((BUDGET_S - SECONDS - STOP_S - 20))
  # `python -m loadtest.compare`, with SIGINT restored first: a command started in the
  # background of a non-interactive shell (`ssh gpu-host 'bash run.sh &'`) inherits SIGINT
  # ignored, and then the deadline below could not make the benchmark stop its servers.
  local main='import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);'
  main+=' runpy.run_module("loadtest.compare", run_name="__main__", alter_sys=True)'
  # shellcheck disable=SC2054  # the commas are in the flags' values
  local cmd=("$PY" -c "$main" --config "$CONFIG" --model-dir "$MODEL_DIR"
             --servers ours,bare-vllm --scenarios "$SCENARIOS" --rates "$RATES"
             --concurrency "$CONCURRENCY" --duration-s "$DURATION_S" --max-tokens "$MAX_TOKENS"
             --out "$OUT" "${EXTRA[@]}")
  # At the deadline SIGINT: the benchmark stops the server it is measuring (its `finally`);
  # SIGKILL STOP_S later if it has not exited. --foreground: Ctrl-C reaches it too.
  local deadline=(timeout --foreground -s INT -k "$STOP_S")
  if [ "$DRY" = 1 ]; then
    show "${deadline[@]}" "<what is left of ${BUDGET_S}s>" "${cmd[@]}"
    return
  fi
  [ "$left" -ge "$MIN_BENCH_S" ] || die "only ${left}s left of BUDGET_S=${BUDGET_S} for the" \
    "benchmark (needs ${MIN_BENCH_S}s); run again: the venv, checkpoint and photos are kept"
  mkdir -p "$(dirname "$OUT")"
  local rc=0 left_on_gpu
  run "${deadline[@]}" "$left" "${cmd[@]}" || rc=$?
  left_on_gpu=$(nvidia-smi --query-compute-apps=pid,process_name,used_memory \
    --format=csv,noheader 2> /dev/null || true)
  [ -z "$left_on_gpu" ] || echo "warning: processes still on the GPU: $left_on_gpu" >&2
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    die "the benchmark ran out of its ${left}s (rc $rc): shrink the grid (SCENARIOS, RATES," \
      "CONCURRENCY, DURATION_S) or raise BUDGET_S; server logs: $REPO/.qvq/bench/compare-*/"
  fi
  [ "$rc" = 0 ] || die "the benchmark failed (rc $rc); server logs: $REPO/.qvq/bench/compare-*/"
}

summary() {
  echo "+ $PY - $OUT <<EOF  # results, plots and a ratio table"
  [ "$DRY" = 0 ] || return 0
  [ -f "$OUT" ] || die "no results at $OUT; server logs: $REPO/.qvq/bench/compare-*/"
  "$PY" - "$OUT" <<'EOF'
import json
import pathlib
import sys

out = pathlib.Path(sys.argv[1])
report = json.loads(out.read_text())
print(f"\nresults: {out}")
for plot in report.get("plots", []):
    print(f"plot:    {out.parent / plot}")
print(f"startup s: {report.get('startup_s')}  unavailable: {report.get('unavailable') or '-'}")
rows = report.get("ratios") or []
if rows:
    cols = {"req_per_s": "req/s", "output_tok_per_s": "tok/s", "ttft_p50_ms": "TTFT p50",
            "latency_p50_ms": "lat p50", "latency_p99_ms": "lat p99", "cpu_s_per_req": "CPU/req"}
    print("\nours / bare vLLM: req/s and tok/s above 1, times and CPU below 1 = ours better")
    print(f"{'scenario':16} {'load':8} " + " ".join(f"{h:>8}" for h in cols.values())
          + "  errors (ours, bare)")
    for r in rows:
        load = (f"{r.get('rate'):g}/s" if r.get("mode") == "open"
                else f"c={r.get('concurrency')}")
        values = (r.get(c) for c in cols)
        print(f"{r.get('scenario', '?'):16} {load:8} "
              + " ".join(f"{'-' if v is None else v:>8}" for v in values)
              + f"  {r.get('errors')}")
EOF
}

say "settings"
validate_settings
say "wheels and venv"
wheels=0
check_wheels || wheels=$?
if [ "$wheels" = 2 ]; then
  die "the wheel directory $WHEELS does not fit this machine (see the top of $0)"
elif [ "$SKIP_INSTALL" = 1 ]; then
  echo "--skip-install: using $VENV as is"
elif [ "$DRY" = 1 ]; then
  install  # prints what it would run
  echo "(dry run: using $VENV as is)"
else
  [ "$wheels" = 0 ] || die "prepare the wheels first (see the top of $0)"
  install
fi
check_python
say "GPUs"
gpu_facts
say "checkpoint ($SHAPE) and the benchmark's photos"
photos_pid=
if [ "$DRY" = 1 ]; then prewarm_photos; else prewarm_photos & photos_pid=$!; fi
build_model
[ -z "$photos_pid" ] || wait "$photos_pid" || true
say "serving config"
write_config
say "benchmark: ours vs bare vLLM"
benchmark
say "summary"
summary
if [ "$DRY" = 1 ]; then
  say "dry run ok: nothing above needed CUDA; run without --dry-run on the GPU machine"
else
  say "done in ${SECONDS}s"
fi
