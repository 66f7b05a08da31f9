import pathlib, sys; sys.path.insert(0, str(pathlib.Path(__file__).parent))
from reference import *
T = str(pathlib.Path(__file__).parent.parent / "teltel") + "/"
W = lambda n, calls: write(T + n + ".expected.json", "demo-teltel", "teltel", calls)
AL, BO = users("usr_alice"), users("usr_bob")

# 1: Alice (user 101, device 7001) calls 37126123456 (Latvia, digits without +: +37126123456).
# RING, READY, JOIN, LEAVE change nothing. 44 s = 10:00:09.870 -> 10:00:54.600.
r1 = fields(direction="outbound", status="inProgress", startedAt="2025-12-01T10:00:00.120Z", users=AL, externalNumber="+37126123456", internalNumber="7001")
r2 = evolve(r1, answeredAt="2025-12-01T10:00:09.870Z")
r3 = evolve(r2, status="completed", endedAt="2025-12-01T10:00:54.600Z", duration=44,
            recordingUrl="https://files.teltel.example/recordings/2025/12/01/a3f1c9e2-5b7d-4e18-9c40-1d2e3f4a5b61.mp3")
W("1-outgoing-answered", {"a3f1c9e2-5b7d-4e18-9c40-1d2e3f4a5b61": call(rev(C, r1), rev(U, r2), rev(U, r3))})

# 2: 37129876543 calls our DID (times +02:00); rings Alice then Bob; Bob answers. START names no
# device or user; each RING adds the user it rings (the device rung last is the internal number);
# once Bob answers the users are who took part: Bob. Alice's CANCEL, READY, JOIN, LEAVE change
# nothing. 89 s = 07:15:06.300 -> 07:16:35.300.
r1 = fields(direction="inbound", status="inProgress", startedAt="2025-12-02T07:15:00.000Z", externalNumber="+37129876543")
r2 = evolve(r1, users=AL, internalNumber="7001")
r3 = evolve(r2, users=users("usr_alice", "usr_bob"), internalNumber="7002")
r4 = evolve(r3, answeredAt="2025-12-02T07:15:06.300Z", users=BO)
r5 = evolve(r4, status="completed", endedAt="2025-12-02T07:16:35.300Z", duration=89,
            recordingUrl="https://files.teltel.example/recordings/2025/12/02/7c2d9e41-0a6b-4f3c-8e15-b2a9d0c4e7f8.mp3")
W("2-incoming-parallel-ring", {"7c2d9e41-0a6b-4f3c-8e15-b2a9d0c4e7f8": call(rev(C, r1), rev(U, r2), rev(U, r3), rev(U, r4), rev(U, r5))})

# 3: 37120000111 calls, Alice's device rings, NOANSWER, COMPLETED is_answered "0": missed,
# shown to the user it rang.
r1 = fields(direction="inbound", status="inProgress", startedAt="2025-12-02T09:00:00.000Z", externalNumber="+37120000111")
r2 = evolve(r1, users=AL, internalNumber="7001")
r3 = evolve(r2, status="missed", endedAt="2025-12-02T09:00:32.000Z", duration=0)
W("3-incoming-unanswered", {"0e9b8a7c-6d5e-4f3a-9b2c-1d0e9f8a7b6c": call(rev(C, r1), rev(U, r2), rev(U, r3))})

# 4: Bob (102, device 7002) dials 37126555444 and hangs up at once: missed, duration 0.
r1 = fields(direction="outbound", status="inProgress", startedAt="2025-12-02T10:00:00.000Z", users=BO, externalNumber="+37126555444", internalNumber="7002")
r2 = evolve(r1, status="missed", endedAt="2025-12-02T10:00:02.000Z", duration=0)
W("4-cancelled-immediately", {"5f4e3d2c-1b0a-4987-8654-3210fedcba98": call(rev(C, r1), rev(U, r2))})
