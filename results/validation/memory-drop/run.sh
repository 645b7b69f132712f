#!/bin/bash
# Validation of --memory-drop for the next cpu grid, decided on runs that no reported number comes from:
# training seed 100 (the grid reports 0-2), evaluation seed 2000 (the grid evaluates with 1000); each cell is the
# grid's own seed-0 config with only seed, eval_seed, memory_drop and run_dir changed.
# Decision rule, fixed before any of these ran: adopt p = 0.25 if the mean normalized score over the 7 cells at
# p = 0.25 is >= the mean at p = 0; otherwise keep p = 0.
cd "$(dirname "$0")/../../.."  # the repository root (ran as cd /work/main)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "${OUT:-/tmp/val}"  # run directories and logs (OUT=... to put them elsewhere)
run() { .venv/bin/python -m more3s.train --config results/cpu-1000steps/runs/$1/$2/seed0/config.json --seed 100 --eval-seed 2000 \
  --memory-drop $3 --run-dir ${OUT:-/tmp/val}/$1_$2_p$3 --name val-$1-$2-p$3 --no-progress > ${OUT:-/tmp/val}/$1_$2_p$3.log 2>&1; }
for p in 0.25 0; do
  for a in more3s embed-rtg prompts-synonym prompts-contextual; do run halfcheetah $a $p; done
  run hopper more3s $p; run breakout more3s $p; run pong more3s $p
done
date
