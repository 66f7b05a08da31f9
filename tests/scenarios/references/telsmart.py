import json, pathlib, sys; sys.path.insert(0, str(pathlib.Path(__file__).parent))
from reference import *
T = str(pathlib.Path(__file__).parent.parent / "telsmart") + "/"
J = users("usr_john"); JA = users("usr_jane")
W = lambda n, calls: write(T + n + ".expected.json", "demo-telsmart", "telsmart", calls)

# 1: inbound, John answers. 24 s = 15:56:15.906227 -> 15:56:40.106173.
r1 = fields(direction="inbound", status="inProgress", startedAt="2025-12-08T15:56:06.386Z", users=J, externalNumber="+3228992675", internalNumber="200")
r2 = evolve(r1, answeredAt="2025-12-08T15:56:15.906Z")
r3 = evolve(r2, status="completed", endedAt="2025-12-08T15:56:40.106Z", duration=24)
W("1-answered-incoming", {"590e9492-cbbc-4252-8205-7eb595099b5f": call(rev(C, r1), rev(U, r2), rev(U, r3))})

# 7: the same call, then its summary: rawResource {"summary": ...}, fields unchanged.
summary = [e for e in json.load(open(T + "7-summary.json")) if e["state"] == "SUMMARY_REPORTING"][0]["summary"]
W("7-summary", {"590e9492-cbbc-4252-8205-7eb595099b5f": call(rev(C, r1), rev(U, r2), rev(U, r3), rev(U, r3, {"summary": summary}))})

# 2: outbound, John calls +3228992675. 11 s = 12:42:49.746163 -> 12:43:01.466167.
r1 = fields(direction="outbound", status="inProgress", startedAt="2025-12-08T12:42:30.666Z", users=J, externalNumber="+3228992675", internalNumber="200")
r2 = evolve(r1, answeredAt="2025-12-08T12:42:49.746Z")
r3 = evolve(r2, status="completed", endedAt="2025-12-08T12:43:01.466Z", duration=11)
W("2-answered-outgoing", {"b9c06dc1-d1fa-4d29-ad55-01a1f60afc43": call(rev(C, r1), rev(U, r2), rev(U, r3))})

# 3: held and resumed: HELD and the resuming ACTIVE change nothing. 36 s = 12:44:44.626183 -> 12:45:21.566141.
r1 = fields(direction="inbound", status="inProgress", startedAt="2025-12-08T12:44:28.066Z", users=J, externalNumber="+3228992675", internalNumber="200")
r2 = evolve(r1, answeredAt="2025-12-08T12:44:44.626Z")
r3 = evolve(r2, status="completed", endedAt="2025-12-08T12:45:21.566Z", duration=36)
W("3-held-and-resumed", {"fc428d3e-d9fb-401f-962c-ba2d813267ea": call(rev(C, r1), rev(U, r2), rev(U, r3))})

# 4: internal call Jane (210) -> John (200): two legs, each an internal call (no externalNumber),
# users the leg's user then the other party. 8 s = 13:18:06.706165 -> 13:18:15.606180.
a1 = fields(direction="outbound", status="inProgress", startedAt="2025-12-08T13:18:00.586Z", users=users("usr_jane", "usr_john"), internalNumber="210")
a2 = evolve(a1, answeredAt="2025-12-08T13:18:06.706Z")
a3 = evolve(a2, status="completed", endedAt="2025-12-08T13:18:15.606Z", duration=8)
b1 = fields(direction="inbound", status="inProgress", startedAt="2025-12-08T13:18:01.026Z", users=users("usr_john", "usr_jane"), internalNumber="200")
b2 = evolve(b1, answeredAt="2025-12-08T13:18:06.706Z")
b3 = evolve(b2, status="completed", endedAt="2025-12-08T13:18:15.606Z", duration=8)
W("4-internal-call", {"b6b87eb5-04e4-4838-81b6-fe6bfa6936bf": call(rev(C, a1), rev(U, a2), rev(U, a3)),
                      "e8461f72-e479-44bd-a312-c51447925a96": call(rev(C, b1), rev(U, b2), rev(U, b3))})

# 5: blind transfer John -> Jane: Telsmart streams per user, no id links the legs: two calls.
# John 10 s = 13:29:09.566182 -> 13:29:20.166190; Jane 5 s = 13:29:34.946590 -> 13:29:40.127319.
a1 = fields(direction="inbound", status="inProgress", startedAt="2025-12-08T13:29:03.266Z", users=J, externalNumber="+3228992675", internalNumber="200")
a2 = evolve(a1, answeredAt="2025-12-08T13:29:09.566Z")
a3 = evolve(a2, status="completed", endedAt="2025-12-08T13:29:20.166Z", duration=10)
b1 = fields(direction="inbound", status="inProgress", startedAt="2025-12-08T13:29:20.366Z", users=JA, externalNumber="+3228992675", internalNumber="210")
b2 = evolve(b1, answeredAt="2025-12-08T13:29:34.946Z")
b3 = evolve(b2, status="completed", endedAt="2025-12-08T13:29:40.127Z", duration=5)
W("5-blind-transfer", {"f458fc7c-d38b-4530-ae30-bb9855a68aa3": call(rev(C, a1), rev(U, a2), rev(U, a3)),
                       "8dafb129-2a6e-48f5-9173-1ee76f9c2b0b": call(rev(C, b1), rev(U, b2), rev(U, b3))})

# 6: attended transfer. John's leg with the caller (20 s = 11:33:18.405884 -> 11:33:39.025882);
# John's consultation to Jane, internal (23 s = 11:33:30.745864 -> 11:33:54.185872); Jane's leg,
# the original caller from transfer_caller_number on (20 s = 11:33:30.745864 -> 11:33:51.385872);
# its second ACTIVE (taking over the caller) changes nothing.
a1 = fields(direction="inbound", status="inProgress", startedAt="2025-12-09T11:33:12.905Z", users=J, externalNumber="+3228992675", internalNumber="200")
a2 = evolve(a1, answeredAt="2025-12-09T11:33:18.405Z")
a3 = evolve(a2, status="completed", endedAt="2025-12-09T11:33:39.025Z", duration=20)
b1 = fields(direction="outbound", status="inProgress", startedAt="2025-12-09T11:33:24.325Z", users=users("usr_john", "usr_jane"), internalNumber="200")
b2 = evolve(b1, answeredAt="2025-12-09T11:33:30.745Z")
b3 = evolve(b2, status="completed", endedAt="2025-12-09T11:33:54.185Z", duration=23)
c1 = fields(direction="inbound", status="inProgress", startedAt="2025-12-09T11:33:24.825Z", users=JA, externalNumber="+3228992675", internalNumber="210")
c2 = evolve(c1, answeredAt="2025-12-09T11:33:30.745Z")
c3 = evolve(c2, status="completed", endedAt="2025-12-09T11:33:51.385Z", duration=20)
W("6-attended-transfer", {"74f93e37-3659-4323-b11d-2b8256a4f984": call(rev(C, a1), rev(U, a2), rev(U, a3)),
                          "91ed30fd-42dc-457e-86a0-b0dae1fe6be4": call(rev(C, b1), rev(U, b2), rev(U, b3)),
                          "1e651e94-477f-4dfc-b0a8-67f0f6c3f85f": call(rev(C, c1), rev(U, c2), rev(U, c3))})
