import pathlib, sys; sys.path.insert(0, str(pathlib.Path(__file__).parent))
from reference import *
T = str(pathlib.Path(__file__).parent.parent / "voys") + "/"
W = lambda n, calls: write(T + n + ".expected.json", "demo-voys", "voys", calls)
PIET, ANNA, KEES = users("usr_piet"), users("usr_anna"), users("usr_kees")
CUST, COMPANY = "+31612345678", "+31508009000"

# 1: created (no target yet), ringing Piet, answered, ended. 90 s = 13:41:31.540912 -> 13:43:02.117345.
r1 = fields(direction="inbound", status="inProgress", startedAt="2023-09-01T13:41:25.972Z", externalNumber=CUST, internalNumber=COMPANY)
r2 = evolve(r1, users=PIET)
r3 = evolve(r2, answeredAt="2023-09-01T13:41:31.540Z")
r4 = evolve(r3, status="completed", endedAt="2023-09-01T13:43:02.117Z", duration=90)
W("1-simple-inbound", {"ua9-grq-prd-1693575683.22973164": call(rev(C, r1), rev(U, r2), rev(U, r3), rev(U, r4))})

# 2: rings Piet, no answer: missed, shown to Piet whom it rang.
r1 = fields(direction="inbound", status="inProgress", startedAt="2023-09-01T13:50:11.309Z", users=PIET, externalNumber=CUST, internalNumber=COMPANY)
r2 = evolve(r1, status="missed", endedAt="2023-09-01T13:50:41.332Z", duration=0)
W("2-no-answer", {"ua9-grq-prd-1693576210.22975841": call(rev(C, r1), rev(U, r2))})

# 3: only `ended` (busy): starts and ends at once, missed, nobody rang.
r1 = fields(direction="inbound", status="missed", startedAt="2023-09-01T14:00:02.871Z", endedAt="2023-09-01T14:00:02.871Z", duration=0, externalNumber=CUST, internalNumber="+31508009003")
W("3-callee-unavailable", {"ua9-grq-prd-1693576802.22978410": call(rev(C, r1))})

# 4: Piet (201) calls +31201234567; his account shows from in-progress on. 263 s =
# 14:10:14.018803 -> 14:14:37.502964.
r1 = fields(direction="outbound", status="inProgress", startedAt="2023-09-01T14:10:05.640Z", externalNumber="+31201234567", internalNumber="201")
r2 = evolve(r1, answeredAt="2023-09-01T14:10:14.018Z", users=PIET)
r3 = evolve(r2, status="completed", endedAt="2023-09-01T14:14:37.502Z", duration=263)
W("4-outbound", {"ua9-grq-prd-1693577405.22981077": call(rev(C, r1), rev(U, r2), rev(U, r3))})

# 5: Piet calls Anna (202, a colleague): no externalNumber, Anna (rung), then once answered the
# users who took part: Piet, who placed it (in-progress names his account as the caller), and
# Anna, who answered (docs/fold.md: the caller's key, then in-progress's targets; Anna's ring no
# longer counts once the call is answered). 153 s = 14:20:15.203318 -> 14:22:48.761240.
r1 = fields(direction="outbound", status="inProgress", startedAt="2023-09-01T14:20:11.455Z", users=ANNA, internalNumber="201")
r2 = evolve(r1, answeredAt="2023-09-01T14:20:15.203Z", users=users("usr_piet", "usr_anna"))
r3 = evolve(r2, status="completed", endedAt="2023-09-01T14:22:48.761Z", duration=153)
W("5-internal-call", {"ua9-grq-prd-1693578011.22983902": call(rev(C, r1), rev(U, r2), rev(U, r3))})

# 6: attended transfer, Voys keeps the customer's call X: X gains Anna at the transfer and ends
# with its own end (243 s = 15:00:17.092377 -> 15:04:20.948172); the consultation Y is deleted.
x1 = fields(direction="inbound", status="inProgress", startedAt="2023-09-01T15:00:12.774Z", users=PIET, externalNumber=CUST, internalNumber=COMPANY)
x2 = evolve(x1, answeredAt="2023-09-01T15:00:17.092Z")
x3 = evolve(x2, users=users("usr_piet", "usr_anna"))
x4 = evolve(x3, status="completed", endedAt="2023-09-01T15:04:20.948Z", duration=243)
y1 = fields(direction="outbound", status="inProgress", startedAt="2023-09-01T15:00:37.215Z", users=ANNA, internalNumber="201")
y2 = evolve(y1, answeredAt="2023-09-01T15:00:41.880Z", users=users("usr_piet", "usr_anna"))  # as in 5
W("6-attended-transfer", {"ua9-grq-prd-1693580412.23011520": call(rev(C, x1), rev(U, x2), rev(U, x3), rev(U, x4)),
                          "ua9-grq-prd-1693580437.23011688": call(rev(C, y1), rev(U, y2), rev(D, y2))})

# 7: blind transfer: Y (Piet ringing Anna) is merged into X before anyone answers it; X's
# second in-progress (Anna takes the caller) changes nothing. 308 s = 15:20:24.651733 ->
# 15:25:33.084411.
x1 = fields(direction="inbound", status="inProgress", startedAt="2023-09-01T15:20:20.418Z", users=PIET, externalNumber=CUST, internalNumber=COMPANY)
x2 = evolve(x1, answeredAt="2023-09-01T15:20:24.651Z")
x3 = evolve(x2, users=users("usr_piet", "usr_anna"))
x4 = evolve(x3, status="completed", endedAt="2023-09-01T15:25:33.084Z", duration=308)
y1 = fields(direction="outbound", status="inProgress", startedAt="2023-09-01T15:20:52.310Z", users=ANNA, internalNumber="201")
W("7-blind-transfer", {"ua9-grq-prd-1693581620.23016233": call(rev(C, x1), rev(U, x2), rev(U, x3), rev(U, x4)),
                       "ua9-grq-prd-1693581652.23016410": call(rev(C, y1), rev(D, y1))})

# 8: rings Piet, Kees picks it up: once answered, the users are who took part: Kees.
# 152 s = 15:40:38.236105 -> 15:43:10.447921.
r1 = fields(direction="inbound", status="inProgress", startedAt="2023-09-01T15:40:30.912Z", users=PIET, externalNumber=CUST, internalNumber=COMPANY)
r2 = evolve(r1, answeredAt="2023-09-01T15:40:38.236Z", users=KEES)
r3 = evolve(r2, status="completed", endedAt="2023-09-01T15:43:10.447Z", duration=152)
W("8-call-pickup", {"ua9-grq-prd-1693582830.23020577": call(rev(C, r1), rev(U, r2), rev(U, r3))})

# 9: rings Kees, then also his forward (+31687654321, no user), which answers. The forward adds
# no user and changes neither number: Kees keeps the call. 321 s = 16:00:41.118542 ->
# 16:06:02.904377.
r1 = fields(direction="inbound", status="inProgress", startedAt="2023-09-01T16:00:15.733Z", users=KEES, externalNumber=CUST, internalNumber="+31508009003")
r2 = evolve(r1, answeredAt="2023-09-01T16:00:41.118Z")
r3 = evolve(r2, status="completed", endedAt="2023-09-01T16:06:02.904Z", duration=321)
W("9-call-forwarding", {"ua9-grq-prd-1693584015.23024911": call(rev(C, r1), rev(U, r2), rev(U, r3))})
