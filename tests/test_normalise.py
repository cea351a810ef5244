"""Normalisation of the identity fields (C4, C5, C7), as examples and as properties."""

import re
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from syncengine import normalise

ids = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Cc"), blacklist_characters="<>"),
              min_size=1, max_size=40)
space = st.text(alphabet=" \t\r\n", max_size=3)


def test_c4_message_id_strips_brackets_and_space():
    assert normalise.message_id("  <abc@mail.example>\r\n") == "abc@mail.example"
    assert normalise.message_id("abc@mail.example") == "abc@mail.example"
    assert normalise.message_id("<>") is None
    assert normalise.message_id("") is None and normalise.message_id(None) is None


def test_c4_message_id_is_compared_exactly_not_case_folded():
    assert normalise.message_id("<ABC@x>") != normalise.message_id("<abc@x>")


@given(ids, space, space)
def test_c4_message_id_bracketed_and_bare_forms_agree(mid, before, after):
    assert normalise.message_id(f"{before}<{mid}>{after}") == normalise.message_id(mid)


@given(ids)
def test_c4_message_id_normalisation_is_idempotent(mid):
    once = normalise.message_id(f"<{mid}>")
    assert normalise.message_id(once) == once
    assert normalise.message_id(normalise.display_message_id(once)) == once


def test_c5_subject_folds_case_and_collapses_space_but_keeps_prefixes():
    assert normalise.subject("  RE:   Quarterly\tNumbers ") == "re: quarterly numbers"
    assert normalise.subject("Fwd: x") != normalise.subject("x")


@given(st.text(max_size=60))
def test_c5_subject_normalisation_is_idempotent(text):
    once = normalise.subject(text)
    assert normalise.subject(once) == once
    assert "  " not in once and once == once.strip()


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
       | st.lists(st.sampled_from([" ", "\t", "\n", "\x1c", "\x85", "\xa0", "\u2003", "\u3000", "\u200b", "a", "\u0301",
                                   "e", "\ufeff"]), max_size=12).map("".join))
def test_c5_subject_collapses_the_white_space_a_regex_would(text):
    # the split()/strip() form in normalise.subject against the regex it replaced
    expected = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip().casefold() if text else ""
    assert normalise.subject(text) == expected


@given(st.text(max_size=30), st.text(alphabet=" \t\n", min_size=1, max_size=4))
def test_c5_subject_ignores_case_and_white_space_runs(text, gap):
    words = text.split()
    assert normalise.subject(gap.join(words).upper()) == normalise.subject(" ".join(words).lower())


def test_address_drops_display_name_and_case():
    assert normalise.address('"Bob B" <Bob@Example.ORG> ') == "bob@example.org"
    assert normalise.addresses(["A <a@x.io>, b@Y.io", "c@z.io"]) == ["a@x.io", "b@y.io", "c@z.io"]


def test_c7_resent_key_prefers_resent_message_id_then_date():
    assert normalise.resent_key("<r1@x>", "Mon, 02 Mar 2026 07:30:00 +0000") == "id:r1@x"
    assert normalise.resent_key(None, "Mon, 02 Mar 2026 07:30:00 +0000") == "date:1772436600"
    assert normalise.resent_key(None, None) is None


def test_times_accept_z_and_mimecast_offsets():
    assert normalise.parse_iso("2026-11-28T09:00:00Z") == normalise.parse_iso("2026-11-28T09:00:00+0000")
    assert normalise.iso(normalise.epoch(normalise.parse_iso("2026-11-28T10:00:00+0100"))) == "2026-11-28T09:00:00Z"


def _addresses_by_getaddresses(values: list[str]) -> list[str]:
    from email.utils import getaddresses
    return [norm for _, addr in getaddresses(values) if (norm := normalise.address(addr))]


header_values = st.lists(st.text(alphabet=st.sampled_from("aZ09.@-_+=?'!#&/`{}|~ \t<>\",;:()[]\\\u00e9"), max_size=30),
                         max_size=4)


bare_values = st.lists(st.from_regex(normalise._BARE, fullmatch=True), max_size=4)


@given(st.one_of(header_values, bare_values))
def test_c5_recipient_addresses_equal_what_getaddresses_finds(values):
    """The bare-address shortcut gives exactly the addresses the email package parses."""
    assert normalise.addresses(values) == _addresses_by_getaddresses(values)


def test_c5_recipient_addresses_of_everyday_fields():
    for values in (["alice@acme.example"], ["Alice@ACME.example", "bob@x.example"], [""], ["a@b@c"], ["@"],
                   ["=?utf-8?q?x?=@y"], ["Bob <bob@x>, carol@y"], ["undisclosed-recipients:;"], ["a@b."]):
        assert normalise.addresses(values) == _addresses_by_getaddresses(values), values


def _parse_iso_as_it_was(text: str):
    """The reader before Python 3.11's fromisoformat was trusted with `Z` and `+0000`."""
    import re
    from datetime import datetime, timezone
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    elif re.search(r"[+-]\d{4}$", value):
        value = value[:-2] + ":" + value[-2:]
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(text)
    return moment.astimezone(timezone.utc)


iso_texts = st.one_of(
    st.builds(lambda d, sep, frac, zone: d.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + frac + zone,
              st.datetimes(), st.sampled_from(["T", " "]), st.sampled_from(["", ".5", ".123456"]),
              st.sampled_from(["Z", "z", "+0000", "-0330", "+05:30", "+00", "", "-1128", "+2400"])),
    st.text(alphabet="0123456789-+:TZ. ", max_size=26))


@given(iso_texts)
def test_snapshot_times_read_as_they_did_with_z_and_basic_offsets(text):
    try:
        expected = _parse_iso_as_it_was(text)
    except (ValueError, OverflowError):
        expected = None
    try:
        got = normalise.parse_iso(text)
    except (ValueError, OverflowError):
        got = None
    assert got == expected
