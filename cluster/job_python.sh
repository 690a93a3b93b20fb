# Sourced (`. cluster/job_python.sh`) by a submitted job's entrypoint shell on the
# cluster: sets RAYPROP_PYTHON to the Python that runs the cluster's Ray.
#
# Ray Jobs runs the entrypoint with `/bin/sh -c` under the PATH of the shell that ran
# `ray start`, so a bare `python` is whatever that PATH finds: the system Python when
# the cluster was started as `.venv/bin/ray start` without activating the venv. The
# shell's parent ($PPID here, as this file is sourced) is Ray's job supervisor, a Ray
# worker of the cluster's own Python; Ray renames its process title, so its argv is
# gone, and /proc/PID/exe is the real interpreter behind a venv's symlink (which lacks
# the venv's packages). In order:
#   1. VIRTUAL_ENV: set when the supervisor runs in an activated environment (the
#      runtime_env pip virtualenv of `submit --pip`, or a venv active at `ray start`);
#   2. the venv holding the Ray the supervisor loaded (ray/_raylet.so in its memory
#      map, three folders below the venv's root, which has pyvenv.cfg);
#   3. the supervisor's interpreter itself (a Python installed without a venv);
#   4. `python` from PATH (no /proc: not Linux).
RAYPROP_PYTHON=
if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    RAYPROP_PYTHON="$VIRTUAL_ENV/bin/python"
elif [ -r "/proc/$PPID/maps" ]; then
    _raylet=$(grep -m 1 -o '/.*/ray/_raylet[^/]*\.so$' "/proc/$PPID/maps" 2>/dev/null)
    if [ -n "$_raylet" ]; then
        _root=$(cd "$(dirname "$_raylet")/../../../.." 2>/dev/null && pwd)
        if [ -n "$_root" ] && [ -f "$_root/pyvenv.cfg" ] && [ -x "$_root/bin/python" ]; then
            RAYPROP_PYTHON="$_root/bin/python"
        fi
    fi
    if [ -z "$RAYPROP_PYTHON" ] && [ -x "/proc/$PPID/exe" ]; then
        RAYPROP_PYTHON=$(readlink "/proc/$PPID/exe")
    fi
fi
[ -n "$RAYPROP_PYTHON" ] || RAYPROP_PYTHON=python
export RAYPROP_PYTHON
