#!/usr/bin/env bash
# pyarrow, the independent reader the tests check Parquet files with.
#
#   infra/pyarrow.sh python         install if missing (venv), print its python
#   infra/pyarrow.sh tojson [--columns=A,B] FILES
#                                   each row of each file as a JSON line
#                                   (timestamps as ms since the epoch), only
#                                   columns A and B when given
#
# Pinned to pyarrow 26.0.1 from PyPI, in a venv under $ADPIPE_CACHE_DIR.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VENV="$ADPIPE_CACHE_DIR/pyarrow-venv"
REQUIREMENTS="pyarrow==26.0.1"

install() { ensure_venv pyarrow "$VENV" "$REQUIREMENTS"; }

case "${1:-}" in
  python) install; echo "$VENV/bin/python" ;;
  tojson)
    shift
    install
    exec "$VENV/bin/python" - "$@" <<'PY'
import datetime, json, sys
import pyarrow.parquet as pq

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)

def plain(value):
    if isinstance(value, datetime.datetime):
        return (value - EPOCH) // datetime.timedelta(milliseconds=1)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value

# --columns=a,b reads only those top-level columns.
paths, columns = sys.argv[1:], None
if paths and paths[0].startswith("--columns="):
    columns = paths.pop(0).split("=", 1)[1].split(",")
out = sys.stdout
for path in paths:
    for row in pq.read_table(path, columns=columns).to_pylist():
        out.write(json.dumps(plain(row)) + "\n")
PY
    ;;
  *) die "usage: $0 python | tojson [--columns=A,B] FILES..." ;;
esac
