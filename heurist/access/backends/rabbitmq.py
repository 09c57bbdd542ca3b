"""Per-miner RabbitMQ users through the management HTTP API (``rabbitmq_management``, port 15672).

Each miner gets user ``miner-<address>`` with a random password and the permissions of
``heurist.access.permissions`` on the broker URL's vhost. A revoke deletes those permissions (new
connections are refused at the vhost) and then closes the user's open connections: RabbitMQ requeues the
jobs the miner held unacknowledged, and honest miners take them.

What ``add-miner`` and ``set_private`` decided is kept as user tags (``heurist-vram-GB``, ``heurist-private``),
so ``restore`` and a second ``add-miner`` give the same permissions back. Taking the private right away
closes the user's connections too: the broker checks a right when a consumer starts, not while it runs.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import requests
from eth_utils import to_checksum_address

from heurist.access.backend import (
    BrokerAccess,
    BrokerAccessError,
    MinerAccount,
    MinerCredentials,
    address_of,
    checked_address,
    inbox_exchange,
    inbox_name,
    miner_user,
)
from heurist.access.permissions import Permissions, miner_permissions
from heurist.errors import ConfigError
from heurist.settings import Settings

log = logging.getLogger(__name__)

VRAM_TAG = "heurist-vram-"  # a user tag recording `add-miner --vram GB`
PRIVATE_TAG = "heurist-private"  # a user tag recording that an operator approved the miner for privacy
CLOSE_REASON = "heurist: broker access revoked (miner banned or revoked by an operator)"


def quoted(name: str) -> str:
    """One path segment of the management API (a vhost '/' becomes %2F)."""
    return quote(name, safe="")


def user_tags(record: dict[str, Any]) -> list[str]:
    """The tags of a user record of the management API (a list, or a comma-separated string before 3.9)."""
    tags = record.get("tags") or []
    return [t for t in (tags.split(",") if isinstance(tags, str) else tags) if t]


def vram_limit(tags: list[str]) -> int | None:
    """The VRAM limit ``add-miner --vram`` recorded in the user's tags (restores keep it)."""
    limits = [int(t.removeprefix(VRAM_TAG)) for t in tags if t.startswith(VRAM_TAG) and t[len(VRAM_TAG):].isdigit()]
    return limits[0] if limits else None


class ManagementAPI:
    """A thin client of the RabbitMQ management API whose errors name the setting to fix."""

    def __init__(self, admin_url: str, timeout_s: float = 10.0) -> None:
        parts = urlsplit(admin_url)
        host = parts.netloc.rpartition("@")[2]
        self.base = f"{parts.scheme}://{host}{parts.path.rstrip('/')}/api"
        self.user = unquote(parts.username or "guest")
        self.session = requests.Session()
        self.session.auth = (self.user, unquote(parts.password or "guest"))
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, json: Any = None, allow_missing: bool = False,
             headers: dict[str, str] | None = None) -> requests.Response | None:
        """The response of a 2xx answer; None for a 404 when ``allow_missing``; BrokerAccessError otherwise."""
        url = self.base + path
        try:
            response = self.session.request(method, url, json=json, headers=headers, timeout=self.timeout_s)
        except requests.RequestException as err:
            raise BrokerAccessError(
                f"cannot reach the RabbitMQ management API at {self.base} ({type(err).__name__}): enable it on "
                "the broker (`rabbitmq-plugins enable rabbitmq_management`; here `make services` does it) or set "
                "HEURIST_BROKER_ADMIN_URL to its http://USER:PASSWORD@HOST:15672") from None
        if response.status_code in (401, 403):
            raise BrokerAccessError(
                f"the RabbitMQ management API at {self.base} refused user {self.user!r} "
                f"({response.status_code}): set HEURIST_BROKER_ADMIN_URL to http://USER:PASSWORD@HOST:15672 of a "
                "user with the administrator tag (`rabbitmqctl set_user_tags USER administrator`)")
        if response.status_code == 404 and allow_missing:
            return None
        if not response.ok:
            raise BrokerAccessError(f"RabbitMQ management API: {method} {path} answered {response.status_code}: "
                                    f"{response.text[:200]}")
        return response

    def get(self, path: str) -> Any:
        """The JSON at ``path``, None if it does not exist."""
        response = self.call("GET", path, allow_missing=True)
        return None if response is None else response.json()


class RabbitMQAccess(BrokerAccess):
    """Miner users on one vhost of a RabbitMQ broker."""

    def __init__(self, broker_url: str, admin_url: str, ledger_queue: str = "ledger",
                 audit_prefix: str = "audit") -> None:
        self.broker = urlsplit(broker_url)
        self.vhost = unquote(self.broker.path[1:]) or "/"
        self.api = ManagementAPI(admin_url)
        self.ledger_queue = ledger_queue
        self.audit_prefix = audit_prefix
        self._vhost_checked = False

    @classmethod
    def from_settings(cls, settings: Settings) -> RabbitMQAccess:
        admin_url = settings.resolved_broker_admin_url()
        if admin_url is None:
            raise ConfigError("HEURIST_BROKER_ADMIN_URL is unset and the broker URL is not amqp://: "
                              "set it to the RabbitMQ management API, http://USER:PASSWORD@HOST:15672")
        return cls(settings.resolved_broker_url(), admin_url, settings.ledger_queue, settings.audit_queue_prefix)

    def add_miner(self, address: str, max_vram_gb: int | None = None) -> MinerCredentials:
        user = miner_user(address)
        self.check_vhost()
        record = self._user(user)
        if record is not None and not self._permitted(user):
            raise BrokerAccessError(f"miner {address} is revoked on the broker (banned?); give it access back "
                                    f"with `heurist broker restore {address}` if that is really meant")
        private = record is not None and PRIVATE_TAG in user_tags(record)  # a new password keeps the approval
        self.permissions(user, max_vram_gb, private)  # a bad --vram fails before the user is made
        password = secrets.token_urlsafe(24)
        tags = ([] if max_vram_gb is None else [f"{VRAM_TAG}{max_vram_gb}"]) + ([PRIVATE_TAG] if private else [])
        self.api.call("PUT", f"/users/{quoted(user)}", json={"password": password, "tags": ",".join(tags)})
        from heurist.access.topology import declare_inbox

        declare_inbox(self.api, self.vhost, user)
        self._permit(user, max_vram_gb, private)
        return MinerCredentials(address=checked_address(address), user=user, password=password,
                                broker_url=self._url_for(user, password))

    def revoke(self, address: str) -> None:
        user = miner_user(address)
        self.check_vhost()
        removed = self.api.call("DELETE", f"/permissions/{quoted(self.vhost)}/{quoted(user)}", allow_missing=True)
        if removed is None and self._user(user) is None:
            log.warning("miner %s has no broker user of its own: nothing to revoke on the broker (the ledger "
                        "still refuses its completions if it is banned)", address)
            return
        closed = self._close_connections(user)
        level = logging.WARNING if removed is not None or closed else logging.INFO  # else: already revoked
        log.log(level, "broker access of miner %s revoked: permissions on vhost %r removed, %d connection(s) "
                "closed", address, self.vhost, closed)

    def restore(self, address: str) -> None:
        tags = user_tags(self._existing(address))
        self._permit(miner_user(address), vram_limit(tags), PRIVATE_TAG in tags)

    def set_private(self, address: str, allowed: bool) -> None:
        """Record the right as the user's ``heurist-private`` tag (its password hash is sent back unchanged: a
        PUT without one clears the password) and re-apply its permissions, unless it is revoked."""
        user, record = miner_user(address), self._existing(address)
        if "password_hash" not in record:
            raise BrokerAccessError(f"the RabbitMQ management API did not return the password hash of {user}: "
                                    "cannot change its tags without clearing its password")
        tags = [t for t in user_tags(record) if t != PRIVATE_TAG] + ([PRIVATE_TAG] if allowed else [])
        hashing = {"hashing_algorithm": record["hashing_algorithm"]} if record.get("hashing_algorithm") else {}
        self.api.call("PUT", f"/users/{quoted(user)}",
                      json={"password_hash": record["password_hash"], **hashing, "tags": ",".join(tags)})
        permitted = self._permitted(user)
        if permitted:
            self._permit(user, vram_limit(tags), allowed)
        closed = 0 if allowed else self._close_connections(user)
        log.log(logging.INFO if allowed or not permitted else logging.WARNING,
                "miner %s %s the private queues%s%s", address, "may now read" if allowed else "may no longer read",
                "" if permitted else " (it stays revoked until `heurist broker restore`)",
                "" if allowed else f"; {closed} connection(s) closed")

    def list_miners(self) -> list[MinerAccount]:
        """Miner users allowed on this vhost, and revoked ones (allowed nowhere). Users are broker-wide: one
        allowed only on another vhost belongs to another network and is left out."""
        self.check_vhost()
        vhosts: dict[str, set[str]] = {}
        for permission in self.api.get("/permissions") or []:
            vhosts.setdefault(permission["user"], set()).add(permission["vhost"])
        connections = Counter(c.get("user") for c in self.api.get(f"/vhosts/{quoted(self.vhost)}/connections") or [])
        accounts = []
        for user in self.api.get("/users") or []:
            name, address = user["name"], address_of(user["name"])
            allowed = vhosts.get(name, set())
            if address is not None and (not allowed or self.vhost in allowed):
                accounts.append(MinerAccount(address=to_checksum_address(address), user=name,
                                             active=self.vhost in allowed, connections=connections[name]))
        return sorted(accounts, key=lambda a: a.address.lower())

    def permissions(self, user: str, max_vram_gb: int | None = None, private: bool = False) -> Permissions:
        """What ``user`` (a miner's) is allowed on this vhost: consume its tiers (and their private twins if
        ``private``), write its inbox and streams."""
        return miner_permissions(user, inbox_exchange(user), (self.ledger_queue, f"{self.audit_prefix}.x"),
                                 max_vram_gb, private)

    def forget(self, address: str) -> None:
        """Delete the miner's broker user and inbox (tests and demos clean up; a ban revokes instead)."""
        user = miner_user(address)
        self._close_connections(user)
        self.api.call("DELETE", f"/users/{quoted(user)}", allow_missing=True)
        self.api.call("DELETE", f"/queues/{quoted(self.vhost)}/{quoted(inbox_name(user))}", allow_missing=True)
        self.api.call("DELETE", f"/exchanges/{quoted(self.vhost)}/{quoted(inbox_exchange(user))}", allow_missing=True)

    def _permit(self, user: str, max_vram_gb: int | None, private: bool) -> None:
        self.api.call("PUT", f"/permissions/{quoted(self.vhost)}/{quoted(user)}",
                      json=self.permissions(user, max_vram_gb, private).as_json())

    def _user(self, user: str) -> dict[str, Any] | None:
        return self.api.get(f"/users/{quoted(user)}")  # type: ignore[no-any-return]

    def _existing(self, address: str) -> dict[str, Any]:
        """The broker's record of the miner's user; BrokerAccessError if it has none."""
        self.check_vhost()
        record = self._user(miner_user(address))
        if record is None:
            raise BrokerAccessError(f"miner {address} has no broker user: create one with "
                                    f"`heurist broker add-miner {address}`")
        return record

    def _permitted(self, user: str) -> bool:
        return self.api.get(f"/permissions/{quoted(self.vhost)}/{quoted(user)}") is not None

    def check_vhost(self) -> None:
        if self._vhost_checked:
            return
        if self.api.get(f"/vhosts/{quoted(self.vhost)}") is None:
            raise BrokerAccessError(f"vhost {self.vhost!r} of HEURIST_BROKER_URL does not exist on the broker: "
                                    f"create it (`rabbitmqctl add_vhost {self.vhost}`) or fix the URL's path")
        self._vhost_checked = True

    def consuming_users(self) -> set[str]:
        """The broker users holding at least one consumer on this vhost (the broker authenticated each): from the
        channels' consumer counts, and from the consumers whose channel the broker has details of (it lists a
        fresh consumer with ``channel_details: []`` until its channel's stats arrive)."""
        vhost = quoted(self.vhost)
        channels = self.api.get(f"/vhosts/{vhost}/channels") or []
        users = {str(c["user"]) for c in channels if isinstance(c, dict) and c.get("user") and c.get("consumer_count")}
        for consumer in self.api.get(f"/consumers/{vhost}") or []:
            details = consumer.get("channel_details") if isinstance(consumer, dict) else None
            if isinstance(details, dict) and details.get("user"):
                users.add(str(details["user"]))
        return users

    def _close_connections(self, user: str, timeout_s: float = 10.0) -> int:
        """Close every connection of ``user`` and wait until the broker lists none; how many there were."""
        path = f"/connections/username/{quoted(user)}"
        seen: set[str] = set()
        give_up = time.monotonic() + timeout_s
        while open_ := self.api.get(path) or []:
            seen.update(c["name"] for c in open_)
            if time.monotonic() > give_up:
                raise BrokerAccessError(f"connections of {user} still open {timeout_s:g}s after closing them")
            self.api.call("DELETE", path, allow_missing=True, headers={"X-Reason": CLOSE_REASON})
            time.sleep(0.05)
        return len(seen)

    def _url_for(self, user: str, password: str) -> str:
        host = self.broker.netloc.rpartition("@")[2]
        query = f"?{self.broker.query}" if self.broker.query else ""
        return f"{self.broker.scheme}://{quoted(user)}:{quoted(password)}@{host}{self.broker.path}{query}"
