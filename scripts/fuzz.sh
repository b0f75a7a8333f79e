#!/usr/bin/env bash
# Fuzz the parsers that read network bytes (request and response framing, Proxy-Authorization,
# challenges) with libFuzzer + AddressSanitizer, for a bounded time.
#   bash scripts/fuzz.sh            # 60 s (what CI runs)
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh
# New inputs that reach new code go to .build-fuzz/corpus (not committed); the committed seeds
# in Fuzz/corpus are read first. A crash leaves crash-* in .build-fuzz/ and fails the script;
# copy it into Fuzz/corpus once fixed, so the ordinary test suite replays it.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
scratch=.build-fuzz
swift build --scratch-path "$scratch" --product portcullis-fuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -DFUZZING
bin="$(swift build --scratch-path "$scratch" --product portcullis-fuzz --show-bin-path)/portcullis-fuzz"
mkdir -p "$scratch/corpus"
cd "$scratch"
# -rss_limit_mb: the parsers keep at most a 64 KiB head and a few KiB of chunk line.
"$bin" -max_total_time="$seconds" -max_len=70000 -rss_limit_mb=2048 -print_final_stats=1 \
    corpus ../Fuzz/corpus
