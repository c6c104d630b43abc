#!/usr/bin/env bash
# Same-budget comparison of issue 6: the window-agnostic recipe against a model trained
# for one prior-work set alone, each for STEPS optimizer steps (default 1000: about
# 5 minutes at one thread, two runs at a time on a 2-core CPU), same recipe otherwise
# (configs/pretrained.yaml: uncertainty head, 20,000-spectrum split).
#   bash scripts/same_budget.sh [OUT_DIR] [STEPS] [PAIRS...]
# Extra fit options for every run in $FIT_EXTRA (e.g. FIT_EXTRA="--model.detrend 2"), and
# for the window-agnostic (universal-*) runs only in $UNIVERSAL_EXTRA (e.g.
# UNIVERSAL_EXTRA="--config configs/narrow-share.yaml");
# PAIRS (default: all four) as "a b" strings, e.g. "universal-plate set-1".
# then, from the printed checkpoints:
#   python -m dysonian_pl sets --ckpt OUT/universal-plate.ckpt --reference set-1=OUT/set-1.ckpt ...
set -euo pipefail
out=${1:-runs/same-budget}
steps=${2:-1000}
mkdir -p "$out"
train() {  # name, set config
    OMP_NUM_THREADS=1 python -m dysonian_pl fit --config "configs/sets/$2.yaml" \
        --config configs/pretrained.yaml --trainer.max_steps "$steps" ${FIT_EXTRA:-} \
        $(case $2 in universal-*) echo "${UNIVERSAL_EXTRA:-}";; esac) \
        --trainer.default_root_dir "$out/$1" > "$out/$1.log" 2>&1
    cp "$(ls -t "$out/$1"/lightning_logs/*/checkpoints/best-*.ckpt | head -1)" "$out/$1.ckpt"
    echo "$out/$1.ckpt"
}
pairs=("universal-plate universal-sphere" "set-1 set-2" "set-3 set-4" "set-5 set-6")
if [ $# -gt 2 ]; then pairs=("${@:3}"); fi
for pair in "${pairs[@]}"; do
    read -r a b <<< "$pair"
    train "$a" "$a" & train "$b" "$b" & wait
done
