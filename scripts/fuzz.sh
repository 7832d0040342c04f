#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/*) for SECONDS each (default 60) on stable
# Rust: cargo-fuzz with libFuzzer, no sanitizer (`-s none`; the sanitizers need nightly).
# Starts from the committed seed corpus (fuzz/corpus/TARGET, made by
# `FUZZ_SEEDS_WRITE=1 cargo test --test fuzz_seeds`); new inputs the fuzzer finds go to
# fuzz/corpus-new/TARGET (not committed), crashes to fuzz/artifacts/TARGET.
#
#   scripts/fuzz.sh            # every target, 60 s each
#   scripts/fuzz.sh 3600       # every target, an hour each
#   scripts/fuzz.sh 600 wire_message envelope
#
# Prints one line per target with the number of executions and whether it crashed;
# exits non-zero if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
if ! command -v cargo-fuzz > /dev/null; then
  cargo install --locked cargo-fuzz
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
cd fuzz
cargo fuzz build -s none --release
failed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus-new/$t"
  log=$(mktemp)
  if cargo fuzz run -s none --release "$t" "corpus-new/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 > "$log" 2>&1; then
    result=ok
  else
    result=CRASH
    failed=1
  fi
  execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || true)
  if [ -z "$execs" ]; then
    execs=$(grep -Eo '#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
  fi
  printf '%-20s %-5s %12s executions in %ss\n' "$t" "$result" "${execs:-?}" "$seconds"
  if [ "$result" = CRASH ]; then
    tail -40 "$log"
  fi
  rm -f "$log"
done
exit $failed
