#!/usr/bin/env bash
# Regenerate docs/results/: the AL-DSGD vs D-PSGD vs MATCHA comparison on the embedded MNIST digits.
#
#   scripts/run_results.sh                 # all sweeps (84 runs), then the reports
#   RUNS=/tmp/results_runs JOBS=2 scripts/run_results.sh
#   scripts/run_results.sh report          # only rebuild the reports from existing runs
#
# Every run: 8 workers, 2-layer MLP (64 hidden), 6 epochs, batch 16 per worker, lr 0.1,
# no momentum, weight decay 5e-4, Dirichlet label skew, 1 Gbit/s links and a fixed 5 ms compute step (so virtual time is deterministic), three seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-/tmp/results_runs}
OUT=${OUT:-docs/results}
JOBS=${JOBS:-2}
TRAIN=${TRAIN:-distlib-train}
COMPARE=${COMPARE:-distlib-compare}
export OMP_NUM_THREADS=1

COMMON="model=mlp model.hidden=[64] workers=8 epochs=6 batch_size=16 optim.lr=0.1 optim.momentum=0 \
optim.weight_decay=5e-4 dataset.partition=dirichlet eval_every=16 eval.per_worker=false \
log.progress=false log.tensorboard=false network=gigabit cluster.step_time_s=0.005 seed=0,1,2"
SPARSE="aldsgd_sparse846_a,aldsgd_sparse538_a,aldsgd_er8_dynamic,aldsgd_sparse846_dynamic,aldsgd_sparse538_dynamic"

# name | overrides. Decentralized runs start from different parameters per worker (the
# AL-DSGD recipe); AllReduce-SGD, the reference, starts from one (it never averages
# parameters, so different starts would never meet; compare is told to --ignore init).
# D-PSGD uses W = I - alpha L, the weights of AL-DSGD's D-PSGD base, so the AL-DSGD vs
# D-PSGD difference is AL-DSGD's own averaging, pull and graphs.
SWEEPS=(
  "er8_allreduce|algorithm=allreduce_sgd init=same topology=matcha_er8 dataset.alpha=0.5,0.1"
  "er8_dpsgd|init=per_worker algorithm=dpsgd algorithm.weights=laplacian topology=matcha_er8 dataset.alpha=0.5,0.1"
  "er8_matcha|init=per_worker algorithm=matcha algorithm.budget=0.5,0.3,0.1 topology=matcha_er8 dataset.alpha=0.5,0.1"
  "er8_aldsgd_matcha|init=per_worker algorithm=al_dsgd algorithm.base=matcha algorithm.budget=0.5,0.3,0.1 topology=matcha_er8 dataset.alpha=0.5,0.1"
  "er8_aldsgd_dpsgd|init=per_worker algorithm=al_dsgd algorithm.base=dpsgd topology=matcha_er8 dataset.alpha=0.5,0.1"
  "sparse_dpsgd|init=per_worker algorithm=dpsgd algorithm.weights=laplacian topology=$SPARSE dataset.alpha=0.1"
  "sparse_aldsgd_dpsgd|init=per_worker algorithm=al_dsgd algorithm.base=dpsgd topology=$SPARSE dataset.alpha=0.1"
)

run_sweep() {
  local name=${1%%|*} overrides=${1#*|}
  if [ -f "$RUNS/$name/.done" ]; then echo "skip $name (done)"; return; fi
  echo "sweep $name: $overrides"
  set -f    # the overrides hold [..] lists: no globbing
  # shellcheck disable=SC2086
  nice -n 10 $TRAIN -m $overrides $COMMON "hydra.sweep.dir=$RUNS/$name" > "$RUNS/$name.log" 2>&1 \
    && touch "$RUNS/$name/.done"
}
export -f run_sweep
export RUNS COMMON TRAIN

if [ "${1:-all}" != report ]; then
  mkdir -p "$RUNS"
  printf '%s\n' "${SWEEPS[@]}" | xargs -P "$JOBS" -I{} bash -c 'run_sweep "$@"' _ {}
fi

mkdir -p "$OUT"
# 1. every algorithm on matcha_er8 at C_b = 0.5, both partitions
$COMPARE "$RUNS"/er8_*/ --out "$OUT/main" --target 0.85 --ignore init --where topology.name=matcha_er8 --where algorithm.budget=0.5
# 2. the budget axis: MATCHA and AL-DSGD (MATCHA base) at C_b = 0.5, 0.3, 0.1
$COMPARE "$RUNS/er8_matcha" "$RUNS/er8_aldsgd_matcha" "$RUNS/er8_dpsgd" --out "$OUT/budget" --target 0.85
# 3. the sparsity axis: D-PSGD and AL-DSGD (D-PSGD base) on sparser static and dynamic graphs, alpha = 0.1
$COMPARE "$RUNS/sparse_dpsgd" "$RUNS/sparse_aldsgd_dpsgd" "$RUNS/er8_dpsgd" "$RUNS/er8_aldsgd_dpsgd" \
  --out "$OUT/sparsity" --target 0.85 --where dataset.alpha=0.1
