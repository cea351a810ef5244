"""The pure decision core, rule by rule (continuity.md)."""

from __future__ import annotations

from syncengine import rules
from syncengine.rules import EntryIn, LocalIn, Msg


def msg(mid="a@x", ts=1000, resent=None, sender="s@x", rcpt="r@x", subject="hello"):
    return Msg(mid, ts, resent, sender, rcpt, subject)


def entry(m: Msg, key=1, status="ARCHIVED", expired=False, cls="IPM.Note", fp=None):
    return EntryIn(key, m, status, expired, cls, fp or f"fp{key}")


def decide(e, locals_=(), peers=(), delivered=None, calendar=True):
    return rules.decide_entry(e, list(locals_), list(peers), delivered or rules.Delivered(), calendar)


def test_c4_submit_times_within_two_minutes_inclusive():
    assert rules.c4_match(msg(ts=1000), msg(ts=1120))
    assert not rules.c4_match(msg(ts=1000), msg(ts=1121))


def test_c4_unknown_time_needs_equal_subjects():
    assert rules.c4_match(msg(ts=None), msg(ts=5))
    assert not rules.c4_match(msg(ts=None), msg(ts=5, subject="other"))


def test_c4_message_id_alone_is_not_enough():
    assert not rules.c4_match(msg(mid="same@app", ts=0), msg(mid="same@app", ts=3600))


def test_c5_fallback_only_when_a_side_lacks_message_id():
    assert rules.c5_match(msg(mid=None, ts=1000), msg(mid="a@x", ts=1060))
    assert not rules.c5_match(msg(mid=None, ts=1000), msg(mid=None, ts=1061))
    assert not rules.c5_match(msg(mid="a@x"), msg(mid="b@x"))
    assert not rules.c5_match(msg(mid=None, rcpt="r@x"), msg(mid=None, rcpt="r@x\tq@x"))


def test_c7_resent_keys_must_agree():
    assert not rules.c4_match(msg(resent="id:r1"), msg())
    assert not rules.c5_match(msg(mid=None, resent="id:r1"), msg(mid=None))
    assert rules.c4_match(msg(resent="id:r1"), msg(resent="id:r1"))


def test_n2_only_a_c4_match_with_both_times_may_purge():
    delivered = [msg(ts=1000)]
    assert rules.purge_match(msg(ts=1100), delivered)
    assert not rules.purge_match(msg(ts=None), delivered)
    assert not rules.purge_match(msg(mid=None, ts=1000), [msg(mid=None, ts=1000)])


def test_c10_classes():
    for cls in ("IPM.Note", "ipm.note.smime", "IPM.Note.SMIME.MultipartSigned"):
        assert rules.class_verdict(cls, True) is None
    for cls in ("IPM.Appointment", "IPM.Appointment.Occurrence", "IPM.Schedule.Meeting.Resp.Tent"):
        assert rules.class_verdict(cls, True) is None
        assert rules.class_verdict(cls, False) == "calendar-disabled"
    for cls in ("IPM.Note.Rules.OofTemplate.Microsoft", "IPM.Contact", "REPORT.IPM.Note.NDR", "IPM.Schedule.Meeting"):
        assert rules.class_verdict(cls, True) == "class-not-delivered"


def test_c11_held_and_expired_get_no_delta_unknown_status_is_deferred():
    assert decide(entry(msg(), status="quarantined")).action is None
    assert decide(entry(msg(), expired=True)).outcome == "held"
    assert (decide(entry(msg(), status="LIMBO")).action, decide(entry(msg(), status="LIMBO")).reason) == \
        ("defer", "unknown-status")
    assert decide(entry(msg(), status=None)).action == "deliver"


def test_c3_c8_present_message_is_not_delivered():
    assert decide(entry(msg()), [LocalIn("l1", msg(ts=1100))]).outcome == "matched"
    assert decide(entry(msg()), [LocalIn("l1", msg(mid="other@x"))]).reason == "not-in-mailbox"


def test_c5_c6_ambiguous_fallback_is_delivered():
    nomid = msg(mid=None)
    two_locations = [LocalIn("l1", nomid), LocalIn("l2", nomid)]
    assert decide(entry(nomid), two_locations).reason == "ambiguous-match"
    one = [LocalIn("l1", nomid)]
    assert decide(entry(nomid, key=1), one, peers=[entry(nomid, key=1)]).outcome == "matched"
    rival = entry(msg(mid=None, ts=1050), key=2)
    assert decide(entry(nomid, key=1), one, peers=[entry(nomid, key=1), rival]).reason == "ambiguous-match"


def test_c8_c17_each_message_delivered_once_per_event():
    delivered = rules.Delivered()
    first = decide(entry(msg(), key=1), delivered=delivered)
    second = decide(entry(msg(ts=1030), key=2), delivered=delivered)
    assert (first.action, second.outcome, second.action) == ("deliver", "already", None)


def test_c13_outbox_already_in_sent_items_is_not_sent_again():
    item = rules.OutboxIn("id1", LocalIn("o1", msg(ts=None)), "IPM.Note")
    assert rules.decide_outbox(item, [LocalIn("s1", msg())], True)[1] is None
    assert rules.decide_outbox(item, [], True) == ("sent", "send", "outbox")
    task = rules.OutboxIn("id2", LocalIn("o2", msg(mid="t@x")), "IPM.Task")
    assert rules.decide_outbox(task, [], True) == ("deferred", "defer", "class-not-delivered")
