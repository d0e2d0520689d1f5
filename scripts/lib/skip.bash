# Sourced by the test stages (scripts/test.d/*): TEAM.md's way of reporting a test that cannot run
# on this host, the shell twin of kumo-testkit's `skip`.
#
#   report_skip TEST REASON   prints `SKIPPED: TEST: REASON` on stderr and appends it to the file
#                             $KUMO_SKIP_LOG names, if set; the caller goes on (or exits 0).
report_skip() {
  local line="SKIPPED: $1: $2"
  echo "$line" >&2
  if [[ -n ${KUMO_SKIP_LOG:-} ]]; then echo "$line" >>"$KUMO_SKIP_LOG"; fi
}
