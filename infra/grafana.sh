#!/usr/bin/env bash
# Grafana dashboards of adpipe (infra/grafana/dashboards, provisioned JSON
# written by infra/grafana/generate.py). No Grafana server runs here (its
# licence); the check is static:
#
#   infra/grafana.sh generate   rewrites the dashboards from generate.py
#   infra/grafana.sh check      the committed dashboards are generate.py's
#                               output; each is well-formed (uid, title, panels
#                               with ids, grid positions and queries); every
#                               query parses (promtool, as a recording rule);
#                               every metric named is one a service exports
#                               and every recording rule used is defined
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
dir="$INFRA_DIR/grafana"

case "${1:-}" in
  generate) python3 "$dir/generate.py" ;;
  check)
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    python3 "$dir/generate.py" "$work/dashboards"
    diff -r "$work/dashboards" "$dir/dashboards" >&2 \
      || die "infra/grafana/dashboards differ from generate.py's output: run infra/grafana.sh generate"
    # Well-formed, and every query as a recording rule for promtool to parse.
    python3 - "$dir/dashboards" "$work/queries.yml" <<'PY' || die "a dashboard is malformed"
import json, pathlib, sys
dashboards, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
rules, uids = [], set()
for path in sorted(dashboards.glob("*.json")):
    board = json.loads(path.read_text())
    for key in ("uid", "title", "panels", "schemaVersion"):
        assert key in board, f"{path.name}: no {key}"
    assert board["uid"] not in uids, f"{path.name}: uid {board['uid']} used twice"
    uids.add(board["uid"])
    assert board["panels"], f"{path.name}: no panels"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
    for panel in board["panels"]:
        where = f"{path.name}: panel {panel.get('title')!r}"
        assert panel.get("title") and panel.get("type"), f"{where}: no title or type"
        assert set(panel.get("gridPos", {})) >= {"h", "w", "x", "y"}, f"{where}: no grid position"
        assert panel.get("targets"), f"{where}: no query"
        for target in panel["targets"]:
            assert target.get("expr") and target.get("refId"), f"{where}: a target without expr or refId"
            rules.append(target["expr"])
with out.open("w") as file:
    file.write("groups:\n  - name: dashboard-queries\n    rules:\n")
    for index, expr in enumerate(rules):
        file.write(f"      - record: dashboard:query_{index}:check\n        expr: {json.dumps(expr)}\n")
print(f"{len(uids)} dashboards, {len(rules)} queries", file=sys.stderr)
PY
    "$("$INFRA_DIR/prometheus.sh" promtool)" check rules "$work/queries.yml" >&2 \
      || die "a dashboard query does not parse"
    "$INFRA_DIR/prometheus.sh" names "$dir"/dashboards/*.json
    log "dashboards: well-formed, every query parses, every metric exported"
    ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
