#!/usr/bin/env bash
# End-to-end CPU sweep wall time, two checkouts side by side, interleaved:
#   bash benchmarks/engine_ab.sh OLD_CHECKOUT [NEW_CHECKOUT] [ROUNDS]
# Each round runs `run.py --seeds=4 --epochs=2 --workdir=... --notensorboard`
# (Fashion-MNIST) in each checkout with this repository's .venv, twice: with no
# compilation cache (cold: --cache_dir=) and with a persistent compilation cache
# of its own that a discarded first run warmed. Prints wall seconds, the
# compile seconds the results record, and the test accuracies.
set -euo pipefail
old=$1; new=${2:-$(cd "$(dirname "$0")/.." && pwd)}; rounds=${3:-2}
python=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python
caches=$(mktemp -d)
sweep() {  # root cache_dir -> "wall compile accuracies"
  local workdir; workdir=$(mktemp -d)
  local start end
  start=$(date +%s.%N)
  PYTHONPATH=$1 "$python" "$1/run.py" --seeds=4 --epochs=2 --workdir="$workdir/w" \
    --notensorboard --cache_dir="$2" > "$workdir/log" 2>&1
  end=$(date +%s.%N)
  "$python" -c "import csv,sys; r=list(csv.DictReader(open(sys.argv[1]))); print(f'{float(sys.argv[2]):6.1f} s  compile {float(r[0][\"compile_seconds\"]):4.2f} s  test_acc', *[x['test_acc'] for x in r])" \
    "$workdir/w/results.csv" "$(echo "$end - $start" | bc)"
  rm -rf "$workdir"
}
for root in "$old" "$new"; do sweep "$root" "$caches/$(echo "$root" | md5sum | cut -c1-8)" > /dev/null; done
for round in $(seq "$rounds"); do
  for root in "$old" "$new"; do
    printf 'round %s  %-24s cold  %s\n' "$round" "$root" "$(sweep "$root" '')"
    printf 'round %s  %-24s warm  %s\n' "$round" "$root" \
      "$(sweep "$root" "$caches/$(echo "$root" | md5sum | cut -c1-8)")"
  done
done
rm -rf "$caches"
