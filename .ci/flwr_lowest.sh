#!/usr/bin/env bash
# Run a targeted subset of the suite under the LOWEST Flower of the supported range
# (flwr >=1.41,<1.43 -> the newest 1.41.x on the index) in a fresh venv.
# Usage: .ci/flwr_lowest.sh [VENV_DIR] [pytest args...]
# Not part of .ci/run (one Flower per venv; this takes minutes): tests/examples/
# test_flower_range.py (marked slow) calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
export FLWR_TELEMETRY_ENABLED=0 PIP_DISABLE_PIP_VERSION_CHECK=1
PY=${PYTHON:-python3}
VENV=${1:-$(mktemp -d)/venv-flwr141}
shift || true
FLWR_SPEC=${FLWR_SPEC:-flwr[simulation]==1.41.*}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
CONSTRAINT=$(dirname "$VENV")/flwr-constraint.txt
echo "${FLWR_SPEC/\[simulation\]/}" > "$CONSTRAINT"
echo "== install ($FLWR_SPEC) into $VENV"
# torch first: 2.13.0 is the local CPU wheel; an unpinned torch would pull a CUDA build.
pip install -q torch==2.13.0
pip install -q "$FLWR_SPEC"
PIP_CONSTRAINT="$CONSTRAINT" pip install -q -e ".[dev]"
python -c "import flwr, torch; print('flwr', flwr.__version__, 'torch', torch.__version__)"
echo "== tests"
if [ "$#" -eq 0 ]; then
  # every Message-API strategy (+ DP wrappers, both orders), drop-in behaviour, a subclass's
  # start() under DP, the in-process server, Flower's Ray simulation, one `flwr run` deploy
  set -- tests/strategies/test_strat_matrix.py tests/strategies/test_strat_dropin.py \
    tests/strategies/test_strat_start_dp.py tests/app/test_server_inprocess.py \
    tests/strategies/test_strat_simulation.py \
    "tests/examples/test_examples.py::test_example_runs_with_flwr_run_installation_off[quickstart-sklearn]"
fi
python -m pytest -q -p no:cacheprovider "$@"
