#!/usr/bin/env bash
# The checks for a lent GPU machine, run from the repository root with the portable dataset copy
# in .gpu/busi (made here by `.venv/bin/python -m bench.portable --out .gpu/busi`): the CUDA
# tests, then both recipes' cross-validation folds, fold by fold, until BUDGET_S seconds are
# spent. Logs go to $OUT (the device tool's folder that comes back) or bench/out/gpu.
set -u
out=${OUT:-bench/out/gpu}
data=${DATA:-.gpu/busi}
recipes=${RECIPES:-study best}
deadline=$((SECONDS + ${BUDGET_S:-480}))
export PYTHONUNBUFFERED=1
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nproc
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
} 2>&1 | tee "$out/machine.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_portable.py 2>&1 | tee "$out/cuda-tests.txt"
for fold in 0 1 2 3 4; do
    for recipe in $recipes; do
        left=$((deadline - SECONDS))
        [ "$left" -gt 20 ] || break 2
        timeout "$left" python3 -m bench.accuracy --recipe "$recipe" --folds 5 --only "$fold" --data "$data" \
            2>&1 | tee -a "$out/$recipe.txt"
    done
done
