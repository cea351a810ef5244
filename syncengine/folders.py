"""Folder roles and received-mail folders (continuity.md "Words")."""

from __future__ import annotations

ROLES = ("inbox", "outbox", "sent", "drafts", "deleted", "junk", "calendar", "sync", "search", "other")

# Sent, drafts and outbox copies do not mean the inbound copy arrived; sync and
# search folders hold conflicts and views, not mail the user received.
NOT_RECEIVED = frozenset({"outbox", "sent", "drafts", "sync", "search"})

# English defaults, compared case-insensitively; older Outlook spells Junk "Junk E-mail".
_BY_NAME = {
    "inbox": "inbox",
    "outbox": "outbox",
    "sent items": "sent",
    "drafts": "drafts",
    "deleted items": "deleted",
    "junk email": "junk",
    "junk e-mail": "junk",
    "calendar": "calendar",
    "sync issues": "sync",
    "conflicts": "sync",
    "local failures": "sync",
    "server failures": "sync",
}

# PidTagAdditionalRenEntryIds (0x36D8) holds these at indexes 0..4.
ADDITIONAL_REN_ROLES = ("sync", "sync", "sync", "sync", "junk")


def role_from_name(name: str) -> str:
    return _BY_NAME.get(name.strip().casefold(), "other")


def is_received(role: str) -> bool:
    return role not in NOT_RECEIVED


def tree_role(folder_path: str) -> str:
    """Role of a folder in an MSG/EML tree, by names as in a PST: a top-level folder by
    its own name, a folder under a sync folder is sync, any other sub-folder is custom."""
    parts = [p for p in folder_path.split("/") if p]
    if not parts:
        return "other"
    top = role_from_name(parts[0])
    if len(parts) == 1 or top == "sync":
        return top
    return "other"
