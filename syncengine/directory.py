"""Directory sync: aliases, nested group membership and delegates (C16, C17, C18)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from . import formats, normalise


@dataclass
class DirectoryView:
    """The membership known at one successful directory sync, normalised."""

    synced: int | None = None
    primary_of: dict[str, str] = field(default_factory=dict)      # alias -> primary
    member_of: dict[str, set[str]] = field(default_factory=dict)  # member -> groups holding it
    delegates_of: dict[str, set[str]] = field(default_factory=dict)  # mailbox -> people

    def primary(self, address: str) -> str:
        norm = normalise.address(address) or address
        return self.primary_of.get(norm, norm)

    def addresses(self, mailbox: str) -> set[str]:
        """The mailbox's primary address and every alias of it."""
        primary = self.primary(mailbox)
        return {primary} | {alias for alias, p in self.primary_of.items() if p == primary}

    def groups(self, mailbox: str) -> set[str]:
        """Every list the mailbox belongs to, directly or through nested lists; cycles end."""
        found: set[str] = set()
        frontier = list(self.addresses(mailbox))
        while frontier:
            for group in self.member_of.get(frontier.pop(), ()):
                if group not in found:
                    found.add(group)
                    frontier.append(group)
        return found

    def may_see(self, client: str, mailbox: str) -> bool:
        """A client may see its own mailbox and those it is a delegate of (C18)."""
        person, box = self.primary(client), self.primary(mailbox)
        return person == box or person in self.delegates_of.get(box, set())


EMPTY = DirectoryView()


def view(directory: formats.Directory) -> DirectoryView:
    result = DirectoryView(synced=normalise.epoch(normalise.parse_iso(directory.synced)))
    for user in directory.users:
        primary = normalise.address(user.emailAddress)
        for alias in user.aliases:
            result.primary_of[normalise.address(alias)] = primary
    member_of: dict[str, set[str]] = defaultdict(set)
    for group in directory.groups:
        name = result.primary(group.emailAddress)
        for member in group.groupMembers:
            member_of[result.primary(member.emailAddress)].add(name)
    result.member_of = dict(member_of)
    delegates: dict[str, set[str]] = defaultdict(set)
    for pair in directory.delegates:
        delegates[result.primary(pair.mailbox)].add(result.primary(pair.delegate))
    result.delegates_of = dict(delegates)
    return result


def load(data: bytes, where: str) -> tuple[formats.Directory, DirectoryView]:
    directory = formats.decode(data, formats.Directory, where)
    formats.check_time(directory.synced, where, "$.synced")
    check(directory, where)
    return directory, view(directory)


def check(directory: formats.Directory, where: str) -> None:
    """formats.md: a sync with an empty address, or an alias that is another user's
    address or alias, is rejected whole: one person's mail is never merged into another's."""
    def named(raw: str, path: str) -> str:
        norm = normalise.address(raw)
        if not norm:
            raise formats.FormatError(f"{where}: {path}: empty address")
        return norm

    owner: dict[str, tuple[str, str]] = {}  # address or alias -> (its user, JSON path)
    for number, user in enumerate(directory.users):
        primary = named(user.emailAddress, f"$.users[{number}].emailAddress")
        for address, path in [(primary, f"$.users[{number}].emailAddress")] + [
                (named(alias, f"$.users[{number}].aliases[{k}]"), f"$.users[{number}].aliases[{k}]")
                for k, alias in enumerate(user.aliases)]:
            holder = owner.setdefault(address, (primary, path))
            if holder[0] != primary:
                raise formats.FormatError(f"{where}: {path}: {address} is already {holder[0]}'s "
                                          f"(at {holder[1]}); the sync is rejected whole")
    for number, group in enumerate(directory.groups):
        named(group.emailAddress, f"$.groups[{number}].emailAddress")
        for k, member in enumerate(group.groupMembers):
            named(member.emailAddress, f"$.groups[{number}].groupMembers[{k}].emailAddress")
    for number, pair in enumerate(directory.delegates):
        named(pair.mailbox, f"$.delegates[{number}].mailbox")
        named(pair.delegate, f"$.delegates[{number}].delegate")
