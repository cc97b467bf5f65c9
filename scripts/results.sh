#!/usr/bin/env bash
# docs/results.md: what Hydra does not do. Every table is one sweep (configs/sweep/), run by
# distlib-train -m; this script lists those commands and builds the reports (distlib-compare).
#
#   scripts/results.sh sweeps     # the untuned tables (MLP; MODEL=cnn for the CNN ones)
#   scripts/results.sh tuned      # the tuned tables: +tune=lr, then +tune=best, per table
#   scripts/results.sh report     # docs/results/ from the runs under $DISTLIB_SWEEPS
#
# Sweeps are resumable (resume=auto: a finished run is skipped, an interrupted one resumes).
# JOBS=2 runs two at a time through the joblib launcher (each with cores / 2 torch threads).
set -euo pipefail
cd "$(dirname "$0")/.."
export DISTLIB_SWEEPS=${DISTLIB_SWEEPS:-sweeps} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MODEL=${MODEL:-mlp}
OUT=${OUT:-docs/results}
TRAIN=(nice -n 10 distlib-train -m hydra/launcher=joblib "hydra.launcher.n_jobs=${JOBS:-1}")
COMPARE=(distlib-compare --target 0.9 --target 0.95)
S=$DISTLIB_SWEEPS

sweeps() {
  "${TRAIN[@]}" +sweep=paper_graphs model="$MODEL"
  "${TRAIN[@]}" +sweep=paper_budget model="$MODEL"
  "${TRAIN[@]}" +sweep=paper_sparsity model="$MODEL"
  "${TRAIN[@]}" +sweep=sparse_matcha model="$MODEL"
  "${TRAIN[@]}" +sweep=extension optim.lr=0.1,0.4
}

# tune ARGS...: one sweep's cells tuned (+tune=lr: 5 rates x seeds 0-1 on validation), then
# five fresh seeds 2-6 at each cell's chosen rate (+tune=best)
tune() { local t; for t in lr best; do "${TRAIN[@]}" "$@" +tune=$t; done; }

# The tuned tables as they ran for docs/results.md, in this order: the MLP cells at 3 epochs
# instead of 6 (CPU time), the CNN's static graph, dynamic graph and MATCHA budgets at the paper
# regime's 6 epochs, the MLP's sparse graphs; then MNIST-1D. (AllReduce-SGD ignores the graph: tuned on the static one only.)
tuned() {
  local e=epochs=3
  tune +sweep=paper_graphs topology=aldsgd_er8_dynamic algorithm=dpsgd_laplacian,al_dsgd,dpsgd $e
  tune +sweep=paper_budget $e
  tune +sweep=paper_graphs topology=matcha_er8 $e
  tune +sweep=extension $e dataset.alpha=0.5
  "${TRAIN[@]}" +sweep=extension +tune=lr $e dataset.alpha=0.1
  # seed 5's Dirichlet(0.1) split leaves one worker 12 training digits, under one batch of 16
  # (the run stops with a one-line error): seed 7 takes its place
  "${TRAIN[@]}" +sweep=extension +tune=best $e dataset.alpha=0.1 seed=2,3,4,6,7
  tune +sweep=paper_graphs model=cnn topology=matcha_er8
  tune +sweep=paper_graphs model=cnn topology=aldsgd_er8_dynamic algorithm=dpsgd_laplacian,al_dsgd,dpsgd
  tune +sweep=paper_budget model=cnn
  tune +sweep=paper_sparsity $e
  tune +sweep=sparse_matcha $e
  "${TRAIN[@]}" +sweep=mnist1d +tune=lr
  "${TRAIN[@]}" +sweep=mnist1d +tune=lr algorithm=dpsgd_laplacian,al_dsgd optim.lr=0.0125,0.025  # below 0.05
  "${TRAIN[@]}" +sweep=mnist1d +tune=best
}

# report NAME DIR... [-- distlib-compare options]: one report into $OUT/NAME
report() {
  local name=$1; shift
  echo "== $name"
  "${COMPARE[@]}" "$@" --out "$OUT/$name"
}

# tuned_report NAME TABLE MODEL [options]: the +tune=best runs (seeds 2-6, each cell at its
# chosen rate), with the chosen rates and every rate's validation accuracy in best.md
tuned_report() {
  local name=$1 table=$2 model=$3; shift 3
  local tune=$S/$table/${model}_tune
  [ -f "$tune/best.json" ] || { echo "== $name: no $tune/best.json, skipped"; return; }
  # one figure per setting, every method in it at its own rate (the rates: best.md)
  report "$name" "$S/$table/${model}_tuned" --ignore optim.lr "$@"
  cp "$tune/best.md" "$OUT/$name/best.md"
}

reports() {
  local R=$S
  if [ -d "$R/paper_graphs/$MODEL" ]; then
    report "$MODEL/paper_graphs" "$R/paper_graphs/$MODEL"
    report "$MODEL/paper_budget" "$R/paper_budget/$MODEL"
    report "$MODEL/paper_sparsity" "$R/paper_sparsity/$MODEL"
    report "$MODEL/sparse_matcha" "$R/sparse_matcha/$MODEL"
    report "$MODEL/extension" "$R/extension/$MODEL"
  fi
  tuned_report tuned/mlp_paper_static paper_graphs mlp --where topology.name=matcha_er8
  tuned_report tuned/mlp_paper_dynamic paper_graphs mlp --where topology.name=schedule
  tuned_report tuned/mlp_budget paper_budget mlp
  tuned_report tuned/mlp_extension extension mlp
  tuned_report tuned/cnn_paper_static paper_graphs cnn --where topology.name=matcha_er8
  tuned_report tuned/cnn_paper_dynamic paper_graphs cnn --where topology.name=schedule
  tuned_report tuned/cnn_budget paper_budget cnn
  tuned_report tuned/mlp_sparsity paper_sparsity mlp
  tuned_report tuned/mlp_sparse_matcha sparse_matcha mlp
  tuned_report tuned/mnist1d mnist1d cnn1d --target 0.5 --target 0.7
}

case "${1:-report}" in
  sweeps) sweeps ;;
  tuned) tuned ;;
  report) reports ;;
  *) echo "usage: $0 sweeps|tuned|report" >&2; exit 2 ;;
esac
