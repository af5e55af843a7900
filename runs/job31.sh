#!/bin/bash
# Session 31: static networks of the hand family at the EENs' expected MACs, on this AMD machine, in the
# near32pick run folders: 1.954 M (the pick EEN's 1.93-2.04 M) and 1.769 M (the hand EEN's 1.73-1.76 M).
# Seed 0 (both archs side by side), then seed 1. Each step resumes per epoch.
set -e
cd /work/main
N=.venv/bin/nachos
A1="w16[k3e1] w24[k3e2,k3e2] w32[k3e2,k3e2] w48[k3e3,k3e3] w64[k3e3,k3e3] f128"
A2="w16[k3e1] w24[k3e2,k3e2] w32[k3e2,k3e2] w48[k3e2,k3e2] w64[k3e3,k3e3] f128"
for S in ${SEEDS:-0 1}; do
  L="--config runs/near32pick-s$S/config.yaml export.baselines=archs export.baseline_epochs=80 num_threads=1"
  date
  $N baseline $L "export.baseline_archs=[\"$A1\"]" > runs/job31-a1-s$S.log 2>&1 &
  $N baseline $L "export.baseline_archs=[\"$A2\"]" > runs/job31-a2-s$S.log 2>&1 &
  wait
  date
done
