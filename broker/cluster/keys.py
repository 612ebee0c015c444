"""Where the cluster keeps things in etcd, under the configured prefix (`/leveret/` by default).

```
<prefix>nodes/<node>                          a live node: bound to the node's lease
<prefix>meta/<vhost>/exchange/<name>          an exchange's definition
<prefix>meta/<vhost>/queue/<name>             a queue's definition and its replica set
<prefix>meta/<vhost>/binding/<source>/<id>    a binding (id: a digest of its destination, key, arguments)
<prefix>leader/<vhost>/<queue>                a replicated queue's leader: bound to the leader's lease; its
                                              create revision is the queue's epoch
<prefix>isr/<vhost>/<queue>                   the queue's in-sync replicas, changed under the leader's epoch
<prefix>admin/<kind>/<name>[/<name>...]       a vhost, user, permission, topic permission, vhost or user
                                              limits, policy or operator policy (broker/cluster/admin_sync.py)
```

Names are percent-encoded (`quote(name, safe="")`), so a `/` in a vhost or queue name cannot reach another
part of the tree and a prefix range never spans two names.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote


def _part(name: str) -> str:
    return quote(name, safe="")


@dataclass(frozen=True, slots=True)
class KeyLayout:
    prefix: str

    @property
    def nodes(self) -> bytes:
        return f"{self.prefix}nodes/".encode()

    def node(self, name: str) -> bytes:
        return f"{self.prefix}nodes/{_part(name)}".encode()

    def node_name(self, key: bytes) -> str:
        return unquote(key.decode()[len(self.prefix) + len("nodes/") :])

    @property
    def meta(self) -> bytes:
        return f"{self.prefix}meta/".encode()

    def exchange(self, vhost: str, name: str) -> bytes:
        return f"{self.prefix}meta/{_part(vhost)}/exchange/{_part(name)}".encode()

    def queue(self, vhost: str, name: str) -> bytes:
        return f"{self.prefix}meta/{_part(vhost)}/queue/{_part(name)}".encode()

    def binding(self, vhost: str, source: str, binding_id: str) -> bytes:
        return f"{self.prefix}meta/{_part(vhost)}/binding/{_part(source)}/{binding_id}".encode()

    def bindings_of(self, vhost: str, source: str) -> bytes:
        return f"{self.prefix}meta/{_part(vhost)}/binding/{_part(source)}/".encode()

    def parse_meta(self, key: bytes) -> tuple[str, str, str] | None:
        """(vhost, kind, name) of a metadata key; for a binding, name is its source exchange."""
        text = key.decode(errors="replace")
        head = f"{self.prefix}meta/"
        if not text.startswith(head):
            return None
        parts = text[len(head) :].split("/")
        if len(parts) < 3 or parts[1] not in ("exchange", "queue", "binding"):
            return None
        return unquote(parts[0]), parts[1], unquote(parts[2])

    @property
    def admin(self) -> bytes:
        return f"{self.prefix}admin/".encode()

    def admin_key(self, kind: str, *names: str) -> bytes:
        return f"{self.prefix}admin/{kind}/{'/'.join(_part(name) for name in names)}".encode()

    def admin_kind(self, key: bytes) -> str | None:
        """The kind of an admin key (vhost, user, permission, ...)."""
        text = key.decode(errors="replace")
        head = f"{self.prefix}admin/"
        if not text.startswith(head) or "/" not in text[len(head) :]:
            return None
        return text[len(head) :].split("/", 1)[0]

    def vhost_meta(self, vhost: str) -> bytes:
        """The prefix of every exchange, queue and binding record of a vhost."""
        return f"{self.prefix}meta/{_part(vhost)}/".encode()

    @property
    def leaders(self) -> bytes:
        return f"{self.prefix}leader/".encode()

    def leader(self, vhost: str, queue: str) -> bytes:
        return f"{self.prefix}leader/{_part(vhost)}/{_part(queue)}".encode()

    @property
    def in_sync(self) -> bytes:
        return f"{self.prefix}isr/".encode()

    def isr(self, vhost: str, queue: str) -> bytes:
        return f"{self.prefix}isr/{_part(vhost)}/{_part(queue)}".encode()

    def queue_of(self, key: bytes) -> tuple[str, str] | None:
        """(vhost, queue) of a leader or isr key."""
        text = key.decode(errors="replace")
        for head in (f"{self.prefix}leader/", f"{self.prefix}isr/"):
            if text.startswith(head):
                parts = text[len(head) :].split("/")
                if len(parts) == 2:
                    return unquote(parts[0]), unquote(parts[1])
        return None
