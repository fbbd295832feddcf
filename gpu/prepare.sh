#!/usr/bin/env bash
# Prepares .gpu/, everything the GPU call (gpu/run.sh, issue 15) needs on a GPU host that has the
# NVIDIA driver but neither Deno, nor Deno's package cache, nor network access
# (../shared/reference/gpu-baseline.md):
#
#   .gpu/gl/*.deb        the Vulkan loader and GLVND (Deno's WebGPU finds no NVIDIA adapter without
#                        them), fetched with apt-get download for amd64
#   .gpu/deno.xz         this Deno binary, compressed (96 MB → ~31 MB)
#   .gpu/npm.tar.xz      Deno's npm cache of DuckDB's packages, the one native dependency a bundle
#                        cannot hold (the grid writes DuckDB shards); musl's 73 MB library is left
#                        out (a glibc host never loads it; Deno only needs its package folder)
#   .gpu/tests.js.xz     the GPU engine's tests (every lib/ test that takes the WebGPU device), one file
#   .gpu/gpu.js.xz       bench/gpu.ts: the bench, the SCALAR pair timings, GPT-2 Small's shape
#   .gpu/main.js.xz      main.ts (run, merge…), DuckDB left outside as an npm import
#   .gpu/deno.json       the config the bundles run under: DuckDB's npm name, no node_modules folder
#   .gpu/vega/           the Vega runtime the HTML report inlines (a run writes one when it ends)
#   .gpu/model/          with --model DIR: the toy model, put where the grid's manifest reads it
#   .gpu/run.sh          gpu/run.sh, the script the GPU host runs
#
# Usage: bash gpu/prepare.sh [--model DIR] [--skip-download] [--out DIR]
#   --model DIR       the trained toy model for the grid when it is not in the checkout (git-ignored
#                     paths such as results/models/ do not travel to the GPU host)
#   --skip-download   only the bundles, the config and run.sh: no apt download, no Deno binary, no
#                     npm cache (the call then uses the deno on PATH and its cache: for tests here)
#   --out DIR         another folder than .gpu (the call's test prepares into a temporary one)
#
# Then, on the device (the `run` tool; `.gpu` is git-ignored, so it is carried):
#   run(command: "bash .gpu/run.sh", carry: [".gpu"], timeout_s: 560)
set -euo pipefail

usage() { sed -n '20,25p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
root="$(cd "$(dirname "$0")/.." && pwd)"
model="" skip_download=0 out="$root/.gpu"
while [ $# -gt 0 ]; do
  case "$1" in
    --model) [ $# -ge 2 ] || usage; model="$2"; shift 2 ;;
    --skip-download) skip_download=1; shift ;;
    --out) [ $# -ge 2 ] || usage; out="$2"; shift 2 ;;
    -h | --help) usage ;;
    *) echo "gpu/prepare.sh: unknown argument \"$1\"" >&2; usage ;;
  esac
done

mkdir -p "$out" && out="$(cd "$out" && pwd)"
[ -z "$model" ] || model="$(realpath "$model")"
cd "$root"
# Deno's version: the bundles and the DuckDB cache are made by this one, and the host runs it too.
deno_version="$(deno --version | head -1)"
echo "preparing $out with $deno_version"

# The DuckDB version the project pins, so the bundle's npm import names the cached one; and the
# Vega runtime the HTML report inlines, which it finds beside wherever "vega" resolves.
duckdb_spec="$(jq -r '.imports["@duckdb/node-api"]' deno.json)"
vega_dir="$(dirname "$(deno eval 'console.log(new URL(import.meta.resolve("vega")).pathname)')")"
mkdir -p "$out/vega" && cp "$vega_dir/vega.min.js" "$out/vega/"
cat > "$out/deno.json" <<EOF
{
  "imports": { "@duckdb/node-api": "$duckdb_spec", "vega": "./vega/vega.module.js" },
  "nodeModulesDir": "none",
  "lock": false
}
EOF

# The bundles resolve DuckDB's packages from Deno's npm cache without a lockfile, which needs each
# package's registry.json; a lockfile-driven `deno install` leaves some out (@duckdb/node-bindings),
# so resolve once the same way here, where the registry can be reached, before the cache is packed.
probe="$(mktemp -d)"
echo 'import "@duckdb/node-api";' > "$probe/duckdb.ts"
deno cache --quiet --config "$out/deno.json" "$probe/duckdb.ts"
rm -rf "$probe"

if [ "$skip_download" = 0 ]; then
  echo "Vulkan loader and GLVND packages (amd64)…"
  rm -rf "$out/gl" && mkdir -p "$out/gl" /tmp/gpu-prepare-apt/partial
  apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/gpu-prepare-apt)
  apt-get "${apt_opts[@]}" update -qq
  (cd "$out/gl" && apt-get "${apt_opts[@]}" download -qq \
    libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)

  echo "Deno binary…"
  xz -T2 -6 -c "$(command -v deno)" > "$out/deno.xz.part" && mv "$out/deno.xz.part" "$out/deno.xz"

  echo "DuckDB's npm packages…"
  npm_cache="$(deno info --json | jq -r .npmCache)/registry.npmjs.org"
  stage="$(mktemp -d)"
  trap 'rm -rf "$stage"' EXIT
  reg="$stage/npm/registry.npmjs.org"
  mkdir -p "$reg/@duckdb"
  cp -r "$npm_cache/detect-libc" "$reg/"
  for pkg in "$npm_cache"/@duckdb/*; do
    name="$(basename "$pkg")"
    mkdir -p "$reg/@duckdb/$name"
    cp "$pkg/registry.json" "$reg/@duckdb/$name/"
    for version in "$pkg"/*/; do
      case "$name" in
        node-api | node-bindings | node-bindings-linux-x64) cp -r "$version" "$reg/@duckdb/$name/" ;;
        node-bindings-linux-x64-musl)
          mkdir -p "$reg/@duckdb/$name/$(basename "$version")"
          cp "$version/package.json" "$reg/@duckdb/$name/$(basename "$version")/" ;;
      esac
    done
  done
  tar -C "$stage" -cf - npm | xz -T2 -6 > "$out/npm.tar.xz"
fi

echo "bundles…"
rm -f "$out"/*.js # uncompressed ones left by an older call would travel too
# One entry importing every GPU test, written where the project's imports resolve (the _*.ts
# pattern is git-ignored) and removed after.
entry="_gpu_call_tests.ts"
trap 'rm -f "$entry"; [ -z "${stage:-}" ] || rm -rf "$stage"' EXIT
{
  echo "// Generated by gpu/prepare.sh: every GPU engine test, bundled into .gpu/tests.js."
  # The tests that take the WebGPU device: kernels, layout, whole engine steps.
  grep -rlE --include='*_test.ts' 'gpuTest|requestGpu|/gpu/' lib | sort | sed 's|.*|import "./&";|'
} > "$entry"
[ "$(grep -c import "$entry")" -gt 0 ] || { echo "gpu/prepare.sh: no GPU tests under lib/" >&2; exit 1; }
# Compressed (15 MB → 3 MB): the device tool carries at most 64 MiB, the checkout included.
bundle() {
  deno bundle --quiet --platform=deno --external=@duckdb/node-api -o "$out/$1" "$2"
  xz -T2 -6 -f "$out/$1"
}
bundle tests.js "$entry"
bundle gpu.js bench/gpu.ts
bundle main.js main.ts

if [ -n "$model" ]; then
  [ -f "$model/config.json" ] || { echo "gpu/prepare.sh: --model $model holds no config.json" >&2; exit 1; }
  if [ -f "$model/state.json" ]; then
    echo "gpu/prepare.sh: --model $model: its training is unfinished (state.json is there); finish it first" >&2
    exit 1
  fi
  rm -rf "$out/model" && cp -r "$model" "$out/model"
fi
cp gpu/run.sh "$out/run.sh"
du -sh "$out"
echo "ready: on the GPU host run   bash .gpu/run.sh   (with \$OUT set; see gpu/run.sh)"
