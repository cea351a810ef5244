"""What the PST and MSG readers share: MAPI property ids and the sender rule."""

from __future__ import annotations

from collections.abc import Callable

from .. import headers, normalise

PR_SENT_REPRESENTING_EMAIL = 0x0065
PR_SENDER_EMAIL = 0x0C1F
PR_SENDER_SMTP = 0x5D01
PR_SENT_REPRESENTING_SMTP = 0x5D02


def sender(prop: Callable[[int], str | None], picked: dict[str, list[str]]) -> str | None:
    """The sender's address: the SMTP properties, else the From header, else whatever
    address the store has (an Exchange DN, which matches nothing but is kept)."""
    for tag in (PR_SENDER_SMTP, PR_SENT_REPRESENTING_SMTP):
        value = normalise.address(prop(tag))
        if value:
            return value
    return normalise.address(headers.first(picked, "from")) or \
        normalise.address(prop(PR_SENDER_EMAIL) or prop(PR_SENT_REPRESENTING_EMAIL))
