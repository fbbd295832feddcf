#!/usr/bin/env bash
# The GPU call (issue 15): run on a GPU host as `bash .gpu/run.sh` from the checkout's root, after
# `bash gpu/prepare.sh` made .gpu/ here. Five steps, in this order, each under its own time cap; a
# step that fails or runs out of time is recorded and the next one starts:
#   1. tests   the GPU engine's tests on the real adapter (kernels and whole steps against tfjs)
#   2. bench   `bench --gpu`: the engine's SAE step interleaved with PyTorch CUDA's (median ratio),
#              stock tfjs webgpu, toy SAE training runs per position
#   3. scalar  SCALAR attribution and ablation curve of one mlp-block and one block pair at the
#              paper's settings, on tfjs webgpu
#   4. grid    the paper-schedule mlp-block grid (the manifest's runs, each into its own DuckDB
#              shard, as a Slurm array task writes it)
#   5. gpt2    GPT-2 Small's shape: SAE steps at gpt2-mlp.yaml's widths on streamed activations of
#              random HF-layout weights, per-step time, projected wall time of the GPT-2 manifests
#
# What comes back, under $OUT (at most 8 files, as the device tool returns them):
#   summary.json  per step: status (ok, failed, timeout), exit code, seconds; the GPU, the date
#   call.log      every step's output, in order
#   bench.jsonl   bench rows (ours_ms, peer_ms, ratio) · bench-more.jsonl · scalar.jsonl · gpt2.jsonl
#   shards.tar.gz results/shards/<run id>.duckdb of each committed run: here,
#                 `tar -xf shards.tar.gz -C results && deno task merge` imports them
#
# Sizes come from the environment, so the same script runs here with tiny ones (tests/gpu_call_test.ts):
#   GPU_CALL_TINY=1            tiny sizes for every step (a software adapter takes seconds per step)
#   GPU_CALL_CAPS="t b s g p"  the five caps in seconds (default "70 110 55 175 60": ~8 min)
#   GPU_CALL_STEPS="1 2 3 4 5" the steps to run
#   GPU_CALL_MANIFEST          the grid's manifest (default experiments/toy-mlp-block.yaml)
#   GPU_CALL_TEST_FILTER       only the GPU tests whose name matches (deno test --filter)
#   GPU_CALL_GPT2_STEPS        SAE steps of the GPT-2 shape (default 200)
#   GPU_CALL_WORKDIR           where the grid's runs write results/ (default the checkout's root)
set -uo pipefail

# The prepared folder is this script's; the checkout is the working directory.
gpu="$(cd "$(dirname "$0")" && pwd)"
root="$PWD"
OUT="${OUT:-$root/gpu-out}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
log="$OUT/call.log"
: > "$log"
say() { echo "[gpu-call $(date -u +%H:%M:%S)] $*" | tee -a "$log" >&2; }
tiny="${GPU_CALL_TINY:-0}"
read -r cap_tests cap_bench cap_scalar cap_grid cap_gpt2 <<< "${GPU_CALL_CAPS:-70 110 55 175 60}"
steps=" ${GPU_CALL_STEPS:-1 2 3 4 5} "
manifest="$(realpath "${GPU_CALL_MANIFEST:-experiments/toy-mlp-block.yaml}")"
workdir="$(realpath "${GPU_CALL_WORKDIR:-$root}")"

# The host: Vulkan loader and GLVND from .gpu/gl on an NVIDIA machine (never elsewhere: unpacking
# into / would replace this machine's own), the driver's ICD, Deno and its DuckDB cache.
if [ -d "$gpu/gl" ] && { [ -d /usr/local/nvidia ] || command -v nvidia-smi > /dev/null; }; then
  for f in "$gpu"/gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json \
    /etc/vulkan/icd.d/nvidia_icd.json; do
    if [ -f "$icd" ]; then export VK_DRIVER_FILES="$icd"; break; fi
  done
  egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  [ -f "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES="$egl"
fi
# The bundles cannot find the checkout's data/ from where they sit: name it.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}" NO_COLOR=1 SCALAR_DATA_DIR="${SCALAR_DATA_DIR:-$root/data}"
# xz, or Python's lzma where the host lacks xz: unxz SRC DST.
unxz() { xz -dc "$1" > "$2" 2> /dev/null || python3 -c "import lzma,shutil,sys;shutil.copyfileobj(lzma.open(sys.argv[1]),open(sys.argv[2],'wb'))" "$1" "$2"; }
deno=deno
if [ -f "$gpu/deno.xz" ]; then
  deno=/tmp/gpu-call-deno
  unxz "$gpu/deno.xz" "$deno" && chmod +x "$deno"
fi
# The bundles, unpacked beside a copy of their config (its import map's paths are relative to it)
# outside the prepared folder, which stays as small as it travels.
run_dir="$(mktemp -d /tmp/gpu-call-XXXXXX)"
cp -r "$gpu/deno.json" "$gpu/vega" "$run_dir/"
for f in "$gpu"/*.js.xz; do unxz "$f" "$run_dir/$(basename "${f%.xz}")"; done
if [ -f "$gpu/npm.tar.xz" ]; then
  export DENO_DIR=/tmp/gpu-call-denodir
  mkdir -p "$DENO_DIR"
  tar -C "$DENO_DIR" -xJf "$gpu/npm.tar.xz" 2> /dev/null ||
    python3 -c "import sys,tarfile;tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$gpu/npm.tar.xz" "$DENO_DIR"
fi
js=("$deno" run -A --cached-only --config "$run_dir/deno.json")

say "host: $(uname -n); $("$deno" --version | head -1); GPU: $(nvidia-smi -L 2> /dev/null | head -1 || echo none)"
summary=()
# step NAME CAP OUTFILE CMD...: runs CMD under `timeout CAP`, its stdout into OUTFILE (appended to
# it when written +OUTFILE; into the log when -), its stderr into the log, and records the outcome.
step() {
  local name="$1" cap="$2" outfile="$3" start code status
  shift 3
  say "step $name (cap ${cap}s): $*"
  start=$(date +%s.%N)
  if [ "$outfile" = - ]; then
    timeout --kill-after=10 "$cap" "$@" >> "$log" 2>&1
  elif [ "${outfile:0:1}" = + ]; then
    timeout --kill-after=10 "$cap" "$@" >> "${outfile:1}" 2>> "$log"
  else
    timeout --kill-after=10 "$cap" "$@" > "$outfile" 2>> "$log"
  fi
  code=$?
  case $code in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed ;; esac
  local secs
  secs=$(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $start }")
  say "step $name: $status (exit $code, ${secs}s)"
  summary+=("{\"step\":\"$name\",\"status\":\"$status\",\"exit\":$code,\"seconds\":$secs,\"cap\":$cap}")
}

if [[ $steps == *" 1 "* ]]; then
  filter=()
  [ -n "${GPU_CALL_TEST_FILTER:-}" ] && filter=(--filter "$GPU_CALL_TEST_FILTER")
  step tests "$cap_tests" - "$deno" test -A --cached-only --config "$run_dir/deno.json" "${filter[@]}" "$run_dir/tests.js"
fi

if [[ $steps == *" 2 "* ]]; then
  # The engine against PyTorch CUDA first, on its own part of the cap, so that a slow stock tfjs
  # case cannot take the ratio with it; then stock tfjs webgpu, then the training runs.
  bench=("${js[@]}" "$run_dir/gpu.js" bench --json --peer "$root/tests/bench/peer_torch.py")
  if [ "$tiny" = 1 ]; then
    step bench "$cap_bench" "$OUT/bench.jsonl" "${bench[@]}" --reps 1 --rounds 2 --configs engine --engine-tokens 1024
  else
    step bench "$((cap_bench * 45 / 100))" "$OUT/bench.jsonl" "${bench[@]}" --reps 30 --rounds 3 --configs engine
    : > "$OUT/bench-more.jsonl"
    step bench-stock "$((cap_bench / 4))" "+$OUT/bench-more.jsonl" "${bench[@]}" --reps 10 --configs stock-webgpu
    step bench-runs "$((cap_bench * 30 / 100))" "+$OUT/bench-more.jsonl" "${bench[@]}" --configs runs --run-steps 750
  fi
fi

# The toy model where the grid's manifest reads it, when the checkout lacks it (results/ is
# git-ignored, so a model trained there does not travel; prepare.sh --model puts one in .gpu/).
model_dir="$(sed -n 's/^ *checkpoint: *//p' "$manifest" | head -1)"
[ -z "$model_dir" ] || model_dir="$(cd "$workdir" && realpath -m "$model_dir")"
if [ -n "$model_dir" ] && [ ! -f "$model_dir/config.json" ] && [ -d "$gpu/model" ]; then
  mkdir -p "$(dirname "$model_dir")" && cp -r "$gpu/model" "$model_dir"
fi

if [[ $steps == *" 3 "* ]]; then
  scalar=()
  [ "$tiny" = 1 ] && scalar=(--tiny)
  [ -f "$model_dir/config.json" ] && scalar+=(--model "$model_dir")
  step scalar "$cap_scalar" "$OUT/scalar.jsonl" "${js[@]}" "$run_dir/gpu.js" scalar --json "${scalar[@]}"
fi

if [[ $steps == *" 4 "* ]]; then
  # The work the runs share first (tokens, activation caches), then each run into its own shard,
  # each under what is left of the step's cap; a run cut off leaves no shard (it stays pending).
  cd "$workdir"
  grid_end=$(($(date +%s) + cap_grid))
  left() { echo $((grid_end - $(date +%s))); }
  rm -rf "$OUT/grid" && mkdir -p "$OUT/grid/shards"
  step grid-prepare "$(left)" - "${js[@]}" "$run_dir/main.js" run "$manifest" --prepare --backend webgpu --yes
  ids=$("${js[@]}" "$run_dir/main.js" plan "$manifest" --db "$OUT/grid/plan.duckdb" 2>> "$log" |
    grep -oE '^ *[0-9a-f]{12}\b' | tr -d ' ')
  say "grid: $(echo $ids | wc -w) runs of $manifest"
  for id in $ids; do
    [ "$(left)" -gt 5 ] || { say "grid: out of time before run $id"; break; }
    shard="$OUT/grid/shards/$id.duckdb"
    step "grid-run-$id" "$(left)" - "${js[@]}" "$run_dir/main.js" run "$manifest" --run-id "$id" --db "$shard" --yes --backend webgpu
    case "${summary[-1]}" in *'"status":"timeout"'*) rm -f "$shard" "$shard.wal" ;; esac
  done
  tar -C "$OUT/grid" -czf "$OUT/shards.tar.gz" shards
  rm -rf "$OUT/grid"
  cd "$root"
fi

if [[ $steps == *" 5 "* ]]; then
  # Steps stop after cap − 30 s (writing 500 MB of random weights and reading them back come
  # first), so that a slow step still leaves a step time and the projection.
  gpt2=(--steps "${GPU_CALL_GPT2_STEPS:-200}")
  if [ "$tiny" = 1 ]; then gpt2+=(--tiny); else gpt2+=(--seconds $((cap_gpt2 > 40 ? cap_gpt2 - 30 : 10))); fi
  step gpt2 "$cap_gpt2" "$OUT/gpt2.jsonl" "${js[@]}" "$run_dir/gpu.js" gpt2 --json "${gpt2[@]}"
fi

{
  echo "{\"date\":\"$(date -u +%FT%TZ)\",\"gpu\":\"$(nvidia-smi -L 2> /dev/null | head -1 | tr -d '"')\","
  echo "\"tiny\":$([ "$tiny" = 1 ] && echo true || echo false),\"steps\":["
  (IFS=,; echo "${summary[*]}")
  echo "]}"
} > "$OUT/summary.json"
rm -rf "$run_dir"
say "done: $OUT"
