# Sourced by setup.sh, test.sh and quickstart.sh: sets PY to the Python ln_deploy is installed into.
# PYTHON=... wins; an active virtual environment is used as it is; otherwise ./.venv is created
# (a fresh Debian's system Python is externally managed: pip refuses to install into it).
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif python3 -c 'import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)' 2>/dev/null; then
  PY=python3
else
  if [ ! -x .venv/bin/python ]; then
    if ! python3 -m venv .venv >/dev/null 2>&1; then
      rm -rf .venv
      echo "error: python3 -m venv failed; on Debian/Ubuntu run: apt-get install python3-venv" >&2
      exit 2
    fi
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  fi
  PY=$PWD/.venv/bin/python
fi
# Console scripts installed beside that Python (ln-deploy, hadolint) come first on PATH.
case "$PY" in */*) PATH="$(dirname "$PY"):$PATH"; export PATH ;; esac
