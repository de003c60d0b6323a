#!/bin/bash
# Re-measure the benchmarks a refactor may move, on two commits in one run (these machines are shared
# and noisy: only figures taken side by side compare). Usage:
#   bash scripts/bench_compare.sh BEFORE [AFTER]        (AFTER defaults to HEAD)
# Each commit is checked out in a worktree under $TMPDIR; every benchmark runs on both, interleaved,
# with this checkout's .venv. Results: $OUT (default /tmp/bench-compare), one file per benchmark and
# commit. The 256k-token recording is bench/.cache/replay256k (bench_replay.py makes it once).
set -euo pipefail
BEFORE=${1:?usage: bench_compare.sh BEFORE [AFTER]}
AFTER=${2:-HEAD}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$ROOT/.venv/bin/python
RUN=$ROOT/bench/.cache/replay256k
OUT=${OUT:-/tmp/bench-compare}
WT=$(mktemp -d)
rm -rf "$OUT" && mkdir -p "$OUT"
export OMP_NUM_THREADS=1
git -C "$ROOT" worktree add -q "$WT/before" "$BEFORE"
git -C "$ROOT" worktree add -q "$WT/after" "$AFTER"
trap 'git -C "$ROOT" worktree remove --force "$WT/before"; git -C "$ROOT" worktree remove --force "$WT/after"' EXIT
[ -d "$RUN" ] || (cd "$ROOT" && $PY bench/bench_replay.py --run-dir "$RUN" --reps 1 > /dev/null)
cat > "$OUT/timeline.py" <<'PYEOF'
"""LOD and score heatmaps of the 256k-token recording, warm, best of 3 (run from a checkout's root)."""
import sys, time
sys.path.insert(0, ".")
from telemetry import Run
run = Run(sys.argv[1])
for w, h, kw in ((1000, 400, {}), (1920, 1080, {}), (1000, 400, {"agg": "min"}), (600, 400, {"agg": "min"})):
    run.lod_timeline(w, h, **kw)
    ts = []
    for _ in range(3):
        t0 = time.perf_counter(); x = run.lod_timeline(w, h, **kw); ts.append(time.perf_counter() - t0)
    print(f"lod_timeline {w}x{h} {kw}: {x.num_rows} cells, {min(ts):.3f} s, value sum {x.column('value').to_numpy().sum()}")
run.score_heatmap(1000, 400)
t0 = time.perf_counter(); x = run.score_heatmap(1000, 400); print(f"score_heatmap 1000x400: {time.perf_counter() - t0:.3f} s")
PYEOF
say() { echo "$1 $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/log.txt"; }
say start
for side in before after; do  # fill each tree's numba cache first
  (cd "$WT/$side" && $PY bench/bench_allocator.py --reps 5 > /dev/null 2>&1 && \
   $PY bench/bench_replay.py --run-dir "$RUN" --reps 1 > /dev/null 2>&1 && $PY "$OUT/timeline.py" "$RUN" > /dev/null 2>&1)
done
say warm
for i in 1 2; do
  for side in before after; do
    cd "$WT/$side"
    $PY bench/bench_allocator.py --reps 200 --json "$OUT/allocator-$side-$i.json" > "$OUT/allocator-$side-$i.txt" 2>&1
    $PY bench/bench_replay.py --run-dir "$RUN" --reps 3 --json "$OUT/replay-$side-$i.json" > "$OUT/replay-$side-$i.txt" 2>&1
    $PY "$OUT/timeline.py" "$RUN" > "$OUT/timeline-$side-$i.txt" 2>&1
    say "$side $i"
  done
done
for side in before after; do
  cd "$WT/$side"
  $PY bench/bench_refocus.py --json "$OUT/refocus-$side.json" > "$OUT/refocus-$side.txt" 2>&1
  $PY bench/bench_telemetry.py --run-dir "$OUT/telemetry-run" --json "$OUT/telemetry-$side.json" > "$OUT/telemetry-$side.txt" 2>&1
  $PY bench/bench_metrics_memory.py --tokens 2000000 --run-dir "$OUT/memory-runs" --json "$OUT/memory-$side.json" \
    > "$OUT/memory-$side.txt" 2>&1
  say "$side refocus, telemetry, memory"
done
say end
