#!/usr/bin/env bash
# The checks for a lent GPU machine, run from the repository root with the portable dataset copy
# in .gpu/busi (made here by `.venv/bin/python -m bench.portable --out .gpu/busi`): the CUDA
# tests, then the cross-validation folds of each lane, fold by fold, until BUDGET_S seconds are
# spent, and each lane's table. LANES holds one lane per line, "RECIPE [bench.accuracy options]";
# the lanes run side by side (the GPU is far from busy with one), so their times are shared times.
# Logs go to $OUT (the device tool's folder that comes back) or bench/out/gpu.
set -u
out=${OUT:-bench/out/gpu}
data=${DATA:-.gpu/busi}
lanes=${LANES:-$'study\nscratch\nbest'}
threads=${THREADS:-2}
deadline=$((SECONDS + ${BUDGET_S:-480}))
export PYTHONUNBUFFERED=1
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nproc
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
} 2>&1 | tee "$out/machine.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_portable.py 2>&1 | tee "$out/cuda-tests.txt"

run_lane() {  # $1: the lane's log; the rest: RECIPE [options]
    local log=$1 recipe=$2
    shift 2
    echo "lane: $recipe $*" >"$log"
    for fold in 0 1 2 3 4; do
        local left=$((deadline - SECONDS))
        [ "$left" -gt 20 ] || return
        timeout "$left" python3 -m bench.accuracy --recipe "$recipe" "$@" --folds 5 --only "$fold" --threads "$threads" \
            --data "$data" >>"$log" 2>&1 || return
    done
    python3 -m bench.accuracy --recipe "$recipe" "$@" --folds 5 --threads "$threads" --data "$data" >>"$log" 2>&1
}

number=0
while read -r lane; do
    [ -n "$lane" ] || continue
    number=$((number + 1))
    # shellcheck disable=SC2086  # a lane's options are words
    run_lane "$out/lane-$number.txt" $lane &
done <<<"$lanes"
wait
tail -n 14 "$out"/lane-*.txt
