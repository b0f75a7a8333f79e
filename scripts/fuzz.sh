#!/usr/bin/env bash
# Fuzz with libFuzzer + AddressSanitizer, for a bounded time, two targets in turn:
#   parsers     request and response framing, Proxy-Authorization, challenges
#   connection  a whole client connection without sockets (ConnectionHarness): arbitrary reads,
#               pipelining, password checks finishing at any point (also after the close),
#               time moving on, half-closes and closes
#   bash scripts/fuzz.sh            # 60 s per target (what CI runs)
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh
# New inputs that reach new code go to .build-fuzz/<target>-corpus (not committed); the committed
# seeds in Fuzz/corpus and Fuzz/connection-corpus are read first. A crash leaves crash-* in
# .build-fuzz/ and fails the script; copy it into the target's committed corpus once fixed, so
# the ordinary test suite replays it.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
scratch=.build-fuzz
swift build --scratch-path "$scratch" --product portcullis-fuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -DFUZZING
bin="$(swift build --scratch-path "$scratch" --product portcullis-fuzz --show-bin-path)/portcullis-fuzz"
cd "$scratch"

# -rss_limit_mb: the parsers keep at most a 64 KiB head and a few KiB of chunk line.
mkdir -p parsers-corpus
PORTCULLIS_FUZZ_TARGET=parsers "$bin" -max_total_time="$seconds" -max_len=70000 -rss_limit_mb=2048 \
    -print_final_stats=1 parsers-corpus ../Fuzz/corpus

# Scripts of a few hundred operations reach every state of a connection; -timeout catches a
# connection that never settles.
mkdir -p connection-corpus
PORTCULLIS_FUZZ_TARGET=connection "$bin" -max_total_time="$seconds" -max_len=2048 -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 connection-corpus ../Fuzz/connection-corpus
