#!/usr/bin/env bash
# GPU check: the benchmark and the `fast` preset on real CIFAR-10, on a lent GPU machine, in one go.
#
#   here:   benchmarks/gpu_check.sh prepare   # stages .devdata/1..3 and .whl/ (both git-ignored)
#   there:  three device calls back to back while the machine stays warm (README, "On a GPU"):
#             1) carry .devdata/1              command: ls .devdata
#             2) carry .devdata/2              command: ls .devdata
#             3) carry .devdata/3 and .whl     command: benchmarks/gpu_check.sh run
#
# The GPU machine has torch but no Hydra: the wheels of hydra-core and omegaconf travel in .whl/.
# `run` writes bench.json, fast.json and fast.log under $OUT (default benchmarks/gpu-out) and
# prints a table, in about 5 minutes on an H200. FAST adds overrides to the fast run; VARIANTS
# adds more fast runs ("trainer.epochs=24;seed=1": one per ';'-separated list of overrides);
# BENCH_S and FAST_S bound each step (a step that fails or runs out costs only itself). Locally,
# `DEVICE=cpu DATA=... BENCH="--widths 4 --batch-size 32 --images 64 --reps 1" FAST="model.width=4
# trainer.epochs=1" benchmarks/gpu_check.sh run` rehearses it.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
    ../shared/tools/device-data
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    rm -rf .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp -d .whl hydra-core==1.4.0rc3 omegaconf==2.4.1rc1
    ls .whl
    ;;
run)
    out=$(realpath -m "${OUT:-benchmarks/gpu-out}")
    device=${DEVICE:-cuda}
    data=${DATA:-.devdata/cifar}
    mkdir -p "$out"
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl
    fi
    if [ -d .devdata/3 ]; then
        mkdir -p .devdata/cifar/cifar-10-batches-py
        cp .devdata/[123]/* .devdata/cifar/cifar-10-batches-py/
    fi
    data=$(realpath "$data")
    # Only sweeper/ and conf/: Hydra would otherwise find our sweep plugin, which needs Optuna.
    src=$(mktemp -d)
    cp -r sweeper conf "$src"/
    export PYTHONPATH="$src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    fi
    # Each step is bounded and may fail without costing the steps after it (one lease, one try).
    # ours (defaults; CUDA graphs, as the fast preset; eager) vs the seed-style loop, [2,2,2,2]
    # width 64, batch 512 (about 4 minutes: each compiled variant compiles once, about 30 s)
    # shellcheck disable=SC2086
    (cd "$src" && timeout "${BENCH_S:-300}" python3 -m sweeper.bench --device "$device" \
        --data-root "$data" --out "$out/bench.json" \
        ${BENCH:---widths 64 --batch-size 512 --reps 3 --images 16384 --variants sweeper sweeper-graphs sweeper-eager}) \
        || echo "bench: failed or timed out (exit $?)"
    # the fast preset, then each of $VARIANTS (overrides, runs separated by ';'), timed end to end;
    # each run reports its training time and time to first step
    runs=("")
    if [ -n "${VARIANTS:-}" ]; then
        IFS=';' read -ra more <<<"$VARIANTS"
        runs+=("${more[@]}")
    fi
    i=0
    for extra in "${runs[@]}"; do
        name=fast; if [ $i -gt 0 ]; then name=fast-$i; fi
        start=$(date +%s.%N)
        # shellcheck disable=SC2086
        (cd "$src" && timeout "${FAST_S:-120}" python3 -m sweeper.train experiment=fast tracking=off \
            "data.root=$data" "trainer.device=$device" "hydra.run.dir=$src/$name" ${FAST:-} $extra) \
            >"$out/$name.log" 2>&1 || echo "$name: failed or timed out (exit $?)"
        end=$(date +%s.%N)
        tail -n 3 "$out/$name.log"
        if [ -f "$src/$name/results.json" ]; then
            python3 - "$src/$name/results.json" "$out/$name.json" "$start" "$end" "$extra" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r["command_s"], r["overrides"] = float(sys.argv[4]) - float(sys.argv[3]), sys.argv[5]
json.dump(r, open(sys.argv[2], "w"), indent=1)
PY
        fi
        i=$((i + 1))
    done
    python3 - "$out" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
row = lambda label, value: print(f"{label:<60}{value:>12}")
if os.path.exists(f"{out}/bench.json"):
    b = json.load(open(f"{out}/bench.json"))
    width, w = next(iter(b["widths"].items()))
    print(f"\n{b['device']}, torch {b['torch']}, {b['date']}")
    for name, rate in w["images_per_s"].items():
        row(f"train img/s, {name} ({b['blocks']} w{width}, batch {b['batch_size']})",
            f"{rate['median']:.0f}")
    for name, r in w["ratio_to_reference"].items():
        print(f"{f'{name} x reference, median [min, max]':<60}{r['median']:>12.2f} "
              f"[{r['min']:.2f}, {r['max']:.2f}]")
    if b.get("fresh_process"):
        row("fresh process: launch to first step, s", f"{b['fresh_process']['launch_to_first_step_s']:.1f}")
for path in sorted(glob.glob(f"{out}/fast*.json"), key=lambda p: (len(p), p)):
    f, name = json.load(open(path)), os.path.basename(path)[:-5]
    print(f"{name}: experiment=fast {f['overrides']}".rstrip())
    row(f"  {name}: status", f["status"])
    row(f"  {name}: test accuracy, %", f"{100 * (f.get('test/acc') or 0):.2f}")
    row(f"  {name}: training time after the first step (no eval), s", f"{f['train_time_s']:.1f}")
    row(f"  {name}: train() call to first step, s", f"{f['startup_s']:.1f}")
    row(f"  {name}: train img/s", f"{f['images_per_s']:.0f}")
    row(f"  {name}: whole command, s", f"{f['command_s']:.1f}")
PY
    ;;
*)
    echo "usage: benchmarks/gpu_check.sh prepare|run" >&2
    exit 2
    ;;
esac
