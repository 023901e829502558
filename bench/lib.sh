# Shared by bench/run.sh and bench/profile.sh (sourced, not run): starts the
# fake upstream and one Sluice replica on loopback and records their pids in
# the caller's `pids` array, so its exit trap stops them.
#
# Needs: $bin (release binaries), $work (a temporary directory), pids=().
# Sets: fake_pid, upstream (…/v1), direct (the fake upstream's base URL),
# sluice_pid, sluice (Sluice's base URL).

# A benchmark's client drives all the load as one user (local mode): the
# per-user limits (issue 13) would measure themselves, so every Sluice a
# benchmark starts (here or through scripts/cluster) has them off, unless
# the caller set them.
export SLUICE_RATE_LIMIT_RPM="${SLUICE_RATE_LIMIT_RPM:-0}"
export SLUICE_RATE_LIMIT_TPM="${SLUICE_RATE_LIMIT_TPM:-0}"
export SLUICE_MAX_GENERATIONS_PER_USER="${SLUICE_MAX_GENERATIONS_PER_USER:-0}"
export SLUICE_MAX_STREAMS_PER_USER="${SLUICE_MAX_STREAMS_PER_USER:-0}"
export SLUICE_MAX_SESSIONS_PER_USER="${SLUICE_MAX_SESSIONS_PER_USER:-0}"
export SLUICE_MAX_FILE_BYTES_PER_USER="${SLUICE_MAX_FILE_BYTES_PER_USER:-0}"
export SLUICE_MAX_CONCURRENT_REQUESTS="${SLUICE_MAX_CONCURRENT_REQUESTS:-100000}"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_fake_upstream() {
  "$bin/fake-upstream" >"$work/fake.out" &
  fake_pid=$!
  pids+=("$fake_pid")
  for _ in $(seq 1 300); do [ -s "$work/fake.out" ] && break; sleep 0.1; done
  upstream="$(head -1 "$work/fake.out")"
  [ -n "$upstream" ] || { echo "the fake upstream did not start" >&2; exit 1; }
  direct="${upstream%/v1}"
}

start_sluice() {
  local port
  port="$(free_port)"
  SLUICE_ADDR="127.0.0.1:$port" SLUICE_DATA_DIR="$work/data" SLUICE_LOG_LEVEL=warn \
    SLUICE_LLM_BASE_URL="$upstream" SLUICE_SESSION_IDLE_SECONDS=30 "$bin/sluice" >"$work/sluice.log" 2>&1 &
  sluice_pid=$!
  pids+=("$sluice_pid")
  sluice="http://127.0.0.1:$port"
  for _ in $(seq 1 300); do curl -sf "$sluice/health" >/dev/null && return 0; sleep 0.1; done
  echo "Sluice did not start; its log:" >&2
  cat "$work/sluice.log" >&2
  exit 1
}
