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
# prints a table. Locally, `DEVICE=cpu DATA=... BENCH="--widths 4 --batch-size 32 --images 64"
# FAST="model.width=4 trainer.epochs=1" benchmarks/gpu_check.sh run` rehearses it.
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
    # ours vs the seed-style loop, [2,2,2,2] width 64, batch 512 (about 2 minutes)
    # shellcheck disable=SC2086
    (cd "$src" && python3 -m sweeper.bench --device "$device" --data-root "$data" \
        --out "$out/bench.json" ${BENCH:---widths 64 --batch-size 512 --reps 3 --images 20480})
    # the fast preset, timed end to end; the run reports its training time and time to first step
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    (cd "$src" && python3 -m sweeper.train experiment=fast tracking=off "data.root=$data" \
        "trainer.device=$device" "hydra.run.dir=$src/fast" ${FAST:-}) 2>&1 | tee "$out/fast.log"
    end=$(date +%s.%N)
    cp "$src/fast/results.json" "$out/fast.json"
    python3 - "$out" "$start" "$end" <<'PY'
import json, sys
out, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
b, f = json.load(open(f"{out}/bench.json")), json.load(open(f"{out}/fast.json"))
width, w = next(iter(b["widths"].items()))
print(f"\n{b['device']}, torch {b['torch']}, {b['date']}")
for name, rate in w["images_per_s"].items():
    label = f"train img/s, {name} ({b['blocks']} w{width}, batch {b['batch_size']})"
    print(f"{label:<60}{rate['median']:>12.0f}")
r = w["ratio_to_reference"]["sweeper"]
print(f"{'x reference, median [min, max]':<60}{r['median']:>12.2f} [{r['min']:.2f}, {r['max']:.2f}]")
print(f"{'fresh process: launch to first step, s':<60}"
      f"{b['fresh_process']['launch_to_first_step_s']:>12.1f}")
print(f"{'fast: status':<60}{f['status']:>12}")
print(f"{'fast: test accuracy, %':<60}{100 * (f['test/acc'] or 0):>12.2f}")
print(f"{'fast: training time (all epochs, no eval), s':<60}{f['train_time_s']:>12.1f}")
print(f"{'fast: train() call to first step, s':<60}{f['startup_s']:>12.1f}")
print(f"{'fast: train img/s':<60}{f['images_per_s']:>12.0f}")
print(f"{'fast: whole command, s':<60}{end - start:>12.1f}")
PY
    ;;
*)
    echo "usage: benchmarks/gpu_check.sh prepare|run" >&2
    exit 2
    ;;
esac
