#!/usr/bin/env bash
# The README's "Sweeps on a cluster (Ray)", followed as a new user would on one machine, then with a
# head that runs nothing plus a worker (two `ray start` on the same machine), in a scratch folder with
# a fresh HOME (no git identity, no Ray token) and a clone of this repository's HEAD.
#
#   bash benchmarks/sweep_walkthrough.sh [SCRATCH]      # about 3 minutes on 2 cores
#
# What it shows, in order: the sweep refused once, before any clone, on a machine without git
# identity; a sweep killed (SIGKILL to the driver) after its first landing leaves no process in its
# work folder; --status tells done from interrupted and the leftovers' disk; the same command again
# removes the leftovers and runs only what is missing; a fresh clone's report sees every experiment;
# a head started with --num-cpus 0 and one worker run a sweep too.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
R=${1:-/tmp/gps-sweep-walkthrough}
rm -rf "$R"; mkdir -p "$R/home"
export HOME=$R/home DVC_NO_ANALYTICS=1 PATH=$(dirname "$(command -v python)"):$PATH
cd "$R"
git clone -q "$ROOT" proj && cd proj
git init -q --bare "$R/remote.git" && git remote set-url origin "$R/remote.git"
dvc remote add -d store "$R/store"
git -c user.name=U -c user.email=u@e commit -qam "DVC remote" && git push -q origin HEAD
echo "== without git identity"
gps sweep --tasks obstacle --methods on_classic --seeds 0 --engine inline --workdir "$R/work"; echo "exit $?"
git config --global user.name "Walkthrough User"; git config --global user.email walkthrough@example.org
export RAY_AUTH_MODE=token
ray get-auth-token --generate > /dev/null 2>&1
ray start --head > "$R/head.log" 2>&1
ADDRESS=$(grep -m1 -o "ray start --address='[^']*'" "$R/head.log" | sed "s/.*='\(.*\)'/\1/")
echo "== one machine: ray start --head ($ADDRESS)"
S=(--tasks obstacle --methods on_classic,badmm --seeds 0-1 -S iterations=2 -S agent.num_samples=3)
gps sweep "${S[@]}" --engine ray --address "$ADDRESS" --workdir "$R/work" > "$R/sweep1.log" 2>&1 &
DRIVER=$!
for _ in $(seq 300); do git ls-remote "$R/remote.git" 'refs/exps/*' | grep -q . && break; sleep 1; done
sleep 3; kill -9 $DRIVER; wait $DRIVER 2>/dev/null; sleep 3
cat "$R/sweep1.log"
echo "== processes working in $R/work after the kill (none expected):"
for p in /proc/[0-9]*; do case "$(readlink "$p/cwd" 2>/dev/null)" in "$R/work"*) echo "$p $(tr '\0' ' ' < "$p/cmdline")";; esac; done
gps sweep "${S[@]}" --status --workdir "$R/work"
echo "== the same command again"
gps sweep "${S[@]}" --engine ray --address "$ADDRESS" --workdir "$R/work"
gps sweep "${S[@]}" --status --workdir "$R/work"
ray stop > /dev/null 2>&1
echo "== a fresh clone"
git clone -q "$R/remote.git" "$R/fresh" 2>/dev/null; cd "$R/fresh" && git checkout -q "$(git -C "$R/proj" rev-parse HEAD)"
dvc exp pull origin > /dev/null && gps report --experiments
cd "$R/proj"
echo "== a head that runs nothing and one worker"
ray start --head --num-cpus 0 > "$R/head2.log" 2>&1
ADDRESS=$(grep -m1 -o "ray start --address='[^']*'" "$R/head2.log" | sed "s/.*='\(.*\)'/\1/")
ray start --address "$ADDRESS" > /dev/null 2>&1
gps sweep --tasks obstacle --methods on_global --seeds 0-1 -S iterations=2 -S agent.num_samples=3 --engine ray --address "$ADDRESS"
ray stop > /dev/null 2>&1
