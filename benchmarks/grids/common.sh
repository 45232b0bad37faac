# Sourced by the grid scripts beside it: run one `freebies ablate` grid so that its results
# never live only in the ignored runs/ folder.
#   run_grid OUT DOCS ABLATE_ARGS...
# puts back the runs already saved in DOCS (benchmarks/grid_copy.py restore), trains the rest
# (a killed grid resumes: rerun the script), saves finished runs into DOCS every 10 minutes
# while it trains, and once more at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PATH="$PWD/.venv/bin:$PATH"

run_grid() {
  local out=$1 docs=$2
  shift 2
  if [ -f "$docs/results.jsonl" ]; then
    python benchmarks/grid_copy.py restore "$docs" "$out"
  fi
  (while sleep 600; do python benchmarks/grid_copy.py save "$out" "$docs" >/dev/null; done) &
  local saver=$!
  trap "kill $saver 2>/dev/null" EXIT
  local status=0
  freebies ablate --out "$out" "$@" || status=$?
  python benchmarks/grid_copy.py save "$out" "$docs"
  return $status
}
