#!/bin/sh
# Entrypoint of the tilepipe images (run under tini, see deploy/Dockerfile).
#
#   docker run tilepipe:cpu run /data/workflow.yaml ...   -> tilepipe run /data/workflow.yaml ...
#   docker run tilepipe:cpu tilepipe run ...              -> tilepipe run ...
#   docker run tilepipe:cpu dask scheduler ...            -> dask scheduler ...
#   docker run tilepipe:cpu dask-worker HOST:8786 ...     -> dask worker HOST:8786 ...
#
# The last form exists for the official dask Helm chart, whose templates start
# containers with the old `dask-scheduler` / `dask-worker` commands that recent
# `distributed` releases no longer install.
set -eu

if [ "$#" -eq 0 ]; then
    set -- tilepipe --help
fi

case "$1" in
    dask-scheduler | dask-worker)
        sub="${1#dask-}"
        shift
        set -- dask "$sub" "$@"
        ;;
    tilepipe | dask | python | python3 | pip | sh | bash | nvidia-smi | /*)
        ;;
    *)
        set -- tilepipe "$@"
        ;;
esac

exec "$@"
