"""Contributor writes: opting into or out of a subnet (its license) and registering this browser as a
node of the logged-in user. Views only parse and call these; the registry's own rules
(license accepted before registration and before `ready`, one owner per public key) live in
`registry.presence` and `subnets.services` and are not repeated here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from billing import services as billing
from bim_core.errors import ServiceError
from ledger import payouts
from ledger.errors import LedgerError
from registry import presence, withdrawals
from registry.models import Node
from subnets import selectors as subnet_selectors
from subnets import services as subnet_services
from subnets.models import EulaAcceptance

# What a browser may report about itself (docs/protocol.md §3.3); anything else is dropped
# rather than stored, since the fingerprint feeds diversity rules and agreement statistics.
BROWSER_BACKENDS = frozenset({"wasm", "webgpu"})
BROWSER_OS = frozenset({"linux", "macos", "windows", "android", "ios", "chromeos", "unknown"})


def account_sign_up(*, form: Any) -> AbstractBaseUser:
    """A new account from the sign-up form, with the trial credits every account starts
    with (one transaction: no account without its grant)."""
    with transaction.atomic():
        user = form.save()
        billing.trial_grant(user=user)
    return user


def subnet_opt_in(
    *, user: AbstractBaseUser, subnet_slug: str, license_version: str, ip: str | None
) -> tuple[EulaAcceptance, bool]:
    """Record the user's acceptance of the subnet's license at the version they were shown
    (a stale page naming an older version is refused by `eula_accept`). Until this exists,
    the registry refuses to register or ready any of the user's nodes for the subnet."""
    subnet = subnet_selectors.subnet_get_active(slug=subnet_slug)
    return subnet_services.eula_accept(user=user, subnet=subnet, license_version=license_version, ip=ip)


def subnet_opt_out(*, user: AbstractBaseUser, subnet_slug: str) -> int:
    """Withdraw the user's opt-in to one subnet: their nodes stop being offered its work at
    once (what they hold finishes and is paid), and come back only after a new opt-in."""
    subnet = subnet_selectors.subnet_get_active(slug=subnet_slug)
    with transaction.atomic():
        withdrawn = subnet_services.eula_withdraw(user=user, subnet=subnet)
        presence.owner_subnet_leave(owner=user, subnet=subnet)
    return withdrawn


def browser_env(env: dict[str, Any]) -> dict[str, Any]:
    """The environment fingerprint a browser node registers and sends in every hello,
    normalized: an unknown backend or OS is recorded as such, never as free text. `webrtc`
    (a boolean, as a bim-node sends it) is kept: dispatch gives a peer-to-peer job to a node
    without WebRTC only when too few others can take it (docs/p2p.md §5)."""
    backend = str(env.get("backend", ""))
    os_name = str(env.get("os", "unknown")).lower()
    try:
        cpu_count = max(1, min(1024, int(env.get("cpu_count", 1))))
    except (TypeError, ValueError):
        cpu_count = 1
    webrtc = env.get("webrtc")
    return {
        **({"webrtc": webrtc} if isinstance(webrtc, bool) else {}),
        "os": os_name if os_name in BROWSER_OS else "unknown",
        "runtime": str(env.get("runtime", ""))[:50],
        "backend": backend if backend in BROWSER_BACKENDS else "unknown",
        "gpu_family": str(env.get("gpu_family", "none")).lower()[:50] or "none",
        "cpu_count": cpu_count,
        "client": "browser",
    }


def browser_node_register(
    *,
    owner: AbstractBaseUser,
    public_key: str,
    env: dict[str, Any],
    subnet_slugs: Sequence[str],
    ip: str | None,
    name: str = "",
) -> tuple[Node, bool]:
    """Register (or find again: the same browser keeps its key in IndexedDB) the browser's
    long-term key as a node of `owner` for subnets whose license the owner accepted."""
    return presence.node_register(
        owner=owner,
        public_key=public_key,
        name=name or f"browser-{public_key[:8]}",
        env=browser_env(env),
        subnet_slugs=list(subnet_slugs),
        ip=ip,
    )


def earnings_withdraw(*, user: AbstractBaseUser, node: Node, amount: int) -> object:
    """Ask to withdraw `amount` micro-credits of the node's earnings (the registry checks
    ownership, the minimum and the balance net of pending withdrawals)."""
    return withdrawals.node_withdrawal_request(node=node, user=user, amount=amount)


def payout_destination_set(*, user: AbstractBaseUser, password: str, method: str, address: str) -> object:
    """Name (or change) where the user's withdrawals are paid; the password must be theirs."""
    try:
        return payouts.payout_destination_set(user=user, password=password, method=method, address=address)
    except LedgerError as exc:
        raise ServiceError("payout_destination_refused", str(exc)) from None
