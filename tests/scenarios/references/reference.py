# The hand-written references: <provider>.py states every revision of every call, field by field,
# from the documents (docs/providers/, /work/shared/seeds, docs/fold.md), with the arithmetic
# of its times in comments; never from the program. This module only orders the fields as
# Morph's document does, spells user refs and writes <scenario>.expected.json:
#   python3 tests/scenarios/references/voys.py

import json, os
ORDER = ["direction","status","startedAt","endedAt","answeredAt","duration","recordingUrl","users","contacts","externalNumber","internalNumber"]
C, U, D = "telephonyCall::created", "telephonyCall::updated", "telephonyCall::deleted"
def users(*ids): return [{"object":"resourceRef","model":"genericUser","id":i} for i in ids]
def fields(**kw):
    assert set(kw) <= set(ORDER), kw
    return {k: kw[k] for k in ORDER if k in kw}
def rev(event, f, raw=None): return {"event": event, "fields": f, "rawResource": raw}
def call(*revs):
    revs = list(revs)
    return {"events": [r["event"] for r in revs], "fields": revs[-1]["fields"] if revs else {}, "revisions": revs}
def write(path, connection, provider, calls):
    doc = {"connection": connection, "connector_id": f"conn_demo_{provider}", "owner_id": f"owner_demo_{provider}", "calls": calls}
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False); f.write("\n")
def evolve(base, **kw):
    d = dict(base); d.update(kw)
    return fields(**{k: v for k, v in d.items() if v is not None})
