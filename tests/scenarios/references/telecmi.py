import pathlib, sys; sys.path.insert(0, str(pathlib.Path(__file__).parent))
from reference import *
T = str(pathlib.Path(__file__).parent.parent / "telecmi") + "/"
W = lambda n, calls: write(T + n + ".expected.json", "demo-telecmi", "telecmi", calls)
RAVI, PRIYA = users("usr_ravi"), users("usr_priya")
REC = "https://recordings.example/telecmi/"

# 1: TeleCMI's own example: one leg-a `answered` of Ravi (202) to 442000000001 (UK, no +).
r1 = fields(direction="outbound", status="inProgress", startedAt="2022-04-22T13:49:00.436Z", answeredAt="2022-04-22T13:49:00.436Z", users=RAVI, externalNumber="+442000000001", internalNumber="202")
W("1-documented-outgoing-answered", {"ccd826f9-67a4-4467-acfb-a53093ff5c9d": call(rev(C, r1))})

# 2: Ravi calls 447700900123; leg b (no user, no numbers) answers first; leg a's hangup ends it
# (62 s = 15:56:09.990 -> 15:57:12.510); the CDR brings TeleCMI's talk time (63 s, it wins) and
# the recording; its end (15:56:09.990 + 63 s) is later than leg a's.
r1 = fields(direction="outbound", status="inProgress", startedAt="2025-12-08T15:56:00.120Z", users=RAVI, externalNumber="+447700900123", internalNumber="202")
r2 = evolve(r1, answeredAt="2025-12-08T15:56:09.990Z")
r3 = evolve(r2, status="completed", endedAt="2025-12-08T15:57:12.510Z", duration=62)
r4 = evolve(r3, duration=63, recordingUrl=REC + "1765209360120447700900123_2223343.mp3")
W("2-outgoing-answered-recorded", {"7b3e1c52-9a41-4c0e-b2f7-5d8e6a1f0c93": call(rev(C, r1), rev(U, r2), rev(U, r3), rev(U, r4))})

# 3: the worked example: 447700900456 calls, Priya (203) is rung on leg b and answers.
# 124 s = 17:00:07.650 -> 17:02:12.050, then the CDR's 125 s and recording.
r1 = fields(direction="inbound", status="inProgress", startedAt="2025-12-08T17:00:00.250Z", externalNumber="+447700900456")
r2 = evolve(r1, users=PRIYA, internalNumber="203")
r3 = evolve(r2, answeredAt="2025-12-08T17:00:07.650Z")
r4 = evolve(r3, status="completed", endedAt="2025-12-08T17:02:12.050Z", duration=124)
r5 = evolve(r4, duration=125, recordingUrl=REC + "1765213200250447700900456_2223343.mp3")
W("3-incoming-answered", {"d41f7e20-6b83-4c5a-9e1d-0a2b3c4d5e6f": call(rev(C, r1), rev(U, r2), rev(U, r3), rev(U, r4), rev(U, r5))})

# 4: 447700900789 calls, Ravi is rung and does not answer; leg a hangs up: missed, shown to Ravi.
# The missed CDR (ends 18:00:00.500 + 26 s, later) adds nothing.
r1 = fields(direction="inbound", status="inProgress", startedAt="2025-12-08T18:00:00.500Z", externalNumber="+447700900789")
r2 = evolve(r1, users=RAVI, internalNumber="202")
r3 = evolve(r2, status="missed", endedAt="2025-12-08T18:00:25.800Z", duration=0)
W("4-incoming-missed", {"3a2b1c0d-9e8f-4a7b-b6c5-d4e3f2a1b0c9": call(rev(C, r1), rev(U, r2), rev(U, r3))})

# 5: as 4 with Priya, then the CDR says a voicemail was left: voicemail, its recording.
r1 = fields(direction="inbound", status="inProgress", startedAt="2025-12-08T19:00:00.750Z", externalNumber="+447700900321")
r2 = evolve(r1, users=PRIYA, internalNumber="203")
r3 = evolve(r2, status="missed", endedAt="2025-12-08T19:00:53.450Z", duration=0)
r4 = evolve(r3, status="voicemail", recordingUrl=REC + "1765220422150516004873_2223343.mp3")
W("5-incoming-missed-voicemail", {"6e5d4c3b-2a19-4f08-9e7d-6c5b4a392817": call(rev(C, r1), rev(U, r2), rev(U, r3), rev(U, r4))})

# 6: by GET, every value a string: Priya calls 447700900654, nobody answers; the missed CDR
# (answeredsec "0") adds nothing.
r1 = fields(direction="outbound", status="inProgress", startedAt="2025-12-08T20:00:00.300Z", users=PRIYA, externalNumber="+447700900654", internalNumber="203")
r2 = evolve(r1, status="missed", endedAt="2025-12-08T20:00:30.750Z", duration=0)
W("6-query-strings-outgoing-missed", {"8a7b6c5d-4e3f-4a2b-9c1d-0e9f8a7b6c5d": call(rev(C, r1), rev(U, r2))})
