#!/usr/bin/env bash
# One entry point that sets itself up: a local .venv with the pinned dependencies, then the job.
#   ./rubik.sh demo          the main job on the embedded default data
#   ./rubik.sh test [ARGS]   the test suite (ARGS go to pytest)
#   ./rubik.sh ARGS...       any `rubik` command, e.g. ./rubik.sh models
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

stamp=.venv/.setup-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "== setting up .venv (torch $(grep -m1 '^torch==' constraints.txt | cut -d= -f3), pinned in constraints.txt)" >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  # -qq: errors only. Otherwise pip repeats the machine's pip.conf warnings (an index "Location ... is
  # ignored") for every package, and setuptools reports each editable install as a warning.
  .venv/bin/python -m pip install -qq --upgrade pip >/dev/null
  .venv/bin/python -m pip install -qq -c constraints.txt -e '.[test]'
  rm -f .venv/.setup-* && touch "$stamp"
fi

case "${1:-demo}" in
  demo)
    shift || true
    exec .venv/bin/rubik demo "$@"
    ;;
  test)
    shift
    .venv/bin/python -m pytest -q "$@"
    ;;
  *)
    exec .venv/bin/rubik "$@"
    ;;
esac
