#!/usr/bin/env bash
# Each shipped config trained as a new user would: a fresh clone, `gps configure NAME`, params.yaml edited for
# the seed and the dynamics source (then `gps pipeline`, as after any edit), `dvc repro`. Issue 28's check of the
# balancing tasks; any config works.
#
#   benchmarks/fresh_clone_runs.sh OUT CONFIG [SEEDS] [SOURCES]
#   benchmarks/fresh_clone_runs.sh /tmp/fresh inverted_pendulum "0 1 2" "fit model"
#
# Each run goes to OUT/CONFIG-SOURCE-sSEED (a clone of this checkout's HEAD) with its dvc repro log; a line per
# run: wall-clock, environment steps sampled, Gymnasium's return of the final policy (gym_evaluation) and its
# reward threshold. The clone's own code runs (PYTHONPATH), with this checkout's virtual environment.
set -euo pipefail
out=$1; config=$2; seeds=${3:-"0 1 2"}; sources=${4:-"fit model"}
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$here/.venv}
mkdir -p "$out"
for source in $sources; do
  for seed in $seeds; do
    run="$out/$config-$source-s$seed"
    rm -rf "$run"
    git clone --quiet "$here" "$run"
    (
      cd "$run"
      export PATH="$venv/bin:$PATH" PYTHONPATH="$run" GPS_PROGRESS=0
      gps configure "$config" > repro.log
      python - "$seed" "$source" <<'PY'
import sys, yaml
params = yaml.safe_load(open("params.yaml"))
params["seed"] = int(sys.argv[1])
params.setdefault("dynamics", {})["source"] = sys.argv[2]
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
PY
      gps pipeline >> repro.log
      start=$(date +%s)
      dvc repro >> repro.log 2>&1 || { echo "$config $source s$seed: dvc repro failed, see $run/repro.log"; exit 1; }
      seconds=$(( $(date +%s) - start ))
      python - "$config" "$source" "$seed" "$seconds" <<'PY'
import json, sys
config, source, seed, seconds = sys.argv[1:]
gym = json.load(open("data/gym_eval.json"))
print(f"{config} {source} s{seed}: {seconds} s, {gym['training_env_steps']} environment steps, Gymnasium return "
      f"{gym['return_mean']:.1f} +- {gym['return_std']:.1f} over {gym['episodes']} episodes "
      f"(threshold {gym.get('reward_threshold')})", flush=True)
PY
    )
  done
done
