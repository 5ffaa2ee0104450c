#!/usr/bin/env bash
# Release gate: fail the pipeline when the dynamic model misses its speed/accuracy bars.
#
#   examples/ci/release_gate.sh [CHECKPOINT] [MANIFEST]
#
# Uses only the contract of 'dyncli profile': the exit code (0 pass, 1 a bar failed,
# 2 usage/input error) and the documented JSON keys (schema_version 1). Bars are set through
# the environment so one script serves every release branch.
set -uo pipefail

CKPT=${1:-}
DATA=${2:-}
REPORT=${REPORT:-profile-report.json}
MAX_WER_INCREASE=${MAX_WER_INCREASE:-0.01}   # absolute: 0.01 = 1 point above full depth
MIN_SPEEDUP=${MIN_SPEEDUP:-1.3}              # end-to-end, vs full depth in the same run
THREADS=${THREADS:-1}
EXTRA_ARGS=${EXTRA_ARGS:-}                   # e.g. "--repeats 5 --thresholds 0.9,0.95"

args=(profile --policy blank-skip --threads "$THREADS" --json "$REPORT"
      --max-wer-increase "$MAX_WER_INCREASE" --min-speedup "$MIN_SPEEDUP")
[[ -n "$CKPT" ]] && args+=("$CKPT")
[[ -n "$DATA" ]] && args+=(--data "$DATA")
# shellcheck disable=SC2206
[[ -n "$EXTRA_ARGS" ]] && args+=($EXTRA_ARGS)

dyncli "${args[@]}"
status=$?

case $status in
  0) verdict="passed" ;;
  1) verdict="FAILED" ;;
  *) echo "release gate: dyncli profile could not run (exit $status)" >&2; exit "$status" ;;
esac

# Summarise from the JSON report (keys: gate.passed, gate.operating_point, gate.violations).
python3 - "$REPORT" "$verdict" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
assert report["schema_version"] == 1, "unexpected profile schema"
gate, static = report["gate"], report["static"]
op = gate["operating_point"]
print(f"release gate {sys.argv[2]}: {op['policy']} @ {op['threshold']}: "
      f"WER {op['wer']:.2%} (static {static['wer']:.2%}), speedup {op['speedup']:.2f}x, "
      f"RTF {op['rtf']:.4f}")
for line in gate["violations"]:
    print(f"  violated: {line}")
PY
exit $status
