#!/usr/bin/env bash
# Regenerate docs/results/: AL-DSGD vs D-PSGD vs MATCHA in the paper's regime on the embedded
# MNIST digits, and the non-IID extension (see docs/results.md for what each table shows).
#
#   scripts/run_results.sh                       # MODEL=mlp: every section (305 runs), then the reports
#   MODEL=cnn scripts/run_results.sh             # the small CNN: the paper-regime sections (205 runs)
#   JOBS=2 SEEDS=5 RUNS=/tmp/results_runs scripts/run_results.sh
#   scripts/run_results.sh report                # only rebuild the reports from the runs there
#   ONLY='paper/static/*' SEEDS=1 EPOCHS=2 scripts/run_results.sh   # a quick end-to-end check
#
# Resumable: a run whose summary.json reached its last step is skipped, an interrupted one
# resumes from its last checkpoint, a diverged one is not retried (scripts/results_grid.py,
# distlib/compare/grid.py). Every run is `distlib-train +experiment=aldsgd_paper` (8 workers,
# IID, lr 0.4, momentum 0, batch 16, weight decay 5e-4, per-worker initialisation,
# W = I - alpha L, the published AL-DSGD constants, 6 epochs) with the cell's overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-mlp}
if [ "$MODEL" = mlp ]; then DEFAULT_SECTIONS=paper,sparse_matcha,extension; else DEFAULT_SECTIONS=paper,sparse_matcha; fi
SECTIONS=${SECTIONS:-$DEFAULT_SECTIONS}
SEEDS=${SEEDS:-5}
JOBS=${JOBS:-1}
RUNS=${RUNS:-/tmp/results_runs}
OUT=${OUT:-docs/results}
EPOCHS=${EPOCHS:-}             # empty: the preset's 6 epochs
ONLY=${ONLY:-}                 # a glob over SECTION/CELL, e.g. 'paper/static/*' (empty: every cell)
PYTHON=${PYTHON:-python}
COMPARE=${COMPARE:-distlib-compare}
TARGETS="--target 0.9 --target 0.95"
export OMP_NUM_THREADS=1

if [ "${1:-all}" != report ]; then
  echo "== grid: MODEL=$MODEL SECTIONS=$SECTIONS SEEDS=$SEEDS JOBS=$JOBS RUNS=$RUNS ${EPOCHS:+EPOCHS=$EPOCHS}"
  nice -n 10 "$PYTHON" scripts/results_grid.py --model "$MODEL" --sections "$SECTIONS" --seeds "$SEEDS" \
    --jobs "$JOBS" --runs "$RUNS" ${EPOCHS:+--epochs "$EPOCHS"} ${ONLY:+--only "$ONLY"}
fi

R="$RUNS/$MODEL${EPOCHS:+_e$EPOCHS}"
O="$OUT/$MODEL${EPOCHS:+_e$EPOCHS}"
# report NAME DIR... : one distlib-compare report into $O/NAME over the folders that exist,
# if the first (the section's own runs) does
report() {
  local name=$1; shift
  if [ ! -d "$1" ]; then echo "== $name: no runs in $1, skipped"; return; fi
  local dirs=() d
  for d in "$@"; do [ -d "$d" ] && dirs+=("$d"); done
  echo "== $name -> $O/$name"
  $COMPARE "${dirs[@]}" --out "$O/$name" $TARGETS
}
P="$R/paper"
# (a) the paper's regime
report paper_graphs   "$P/static" "$P/dynamic"                       # D-PSGD vs AL-DSGD, static and dynamic matcha_er8
report paper_budget   "$P/budget" "$P/static/dpsgd" "$P/static/al_dsgd"  # MATCHA vs AL-DSGD on MATCHA, C_b 0.5 / 0.3 / 0.1
report paper_sparsity "$P/sparse" "$P/static/dpsgd" "$P/static/al_dsgd" "$P/dynamic/dpsgd" "$P/dynamic/al_dsgd"
report sparse_matcha  "$R/sparse_matcha" "$P/budget/matcha_cb0.5" "$P/budget/al_dsgd_matcha_cb0.5"
# (b) the extension: Dirichlet label skew at lr 0.1 and 0.4 (leaders.md: leader shares vs shard sizes)
report extension      "$R/extension"
