"""Settings of peer-to-peer jobs (docs/p2p.md): ICE servers and TURN credentials, the
delivery, upload and audit rules, the TURN server's own usage figures, and the user socket
(/ws/user/) their signalling runs over. bim_site/settings.py imports every name here."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from bim_site.env import env_bool, env_int, env_str

# ICE servers handed to users and nodes: STUN URLs and TURN URLs (comma-separated, e.g.
# "turn:turn.example.org:3478?transport=udp"); TURN credentials follow the TURN REST
# convention from the secret coturn shares (--static-auth-secret), valid this many seconds.
P2P_STUN_URLS = [u for u in env_str("BIM_STUN_URLS").split(",") if u.strip()]
P2P_TURN_URLS = [u for u in env_str("BIM_TURN_URLS").split(",") if u.strip()]
P2P_TURN_SECRET = env_str("BIM_TURN_SECRET")
P2P_TURN_TTL_S = env_int("BIM_TURN_TTL_S", 3600)
# "relay": peers use TURN only (WebRTC's iceTransportPolicy), so neither learns the other's
# address; "all" (the default) lets them connect directly when they can.
P2P_ICE_TRANSPORT_POLICY = env_str("BIM_ICE_TRANSPORT_POLICY", "all")
if P2P_ICE_TRANSPORT_POLICY not in ("all", "relay"):
    raise ImproperlyConfigured(f"BIM_ICE_TRANSPORT_POLICY={P2P_ICE_TRANSPORT_POLICY!r} is not all or relay")
# A pair that committed the same hash settles once the user confirms receiving it; past this
# many seconds without that, the registry fetches the payload itself and delivers it.
P2P_DELIVERY_S = env_int("BIM_P2P_DELIVERY_S", 30)
# A node asked for a committed payload has this long to upload it, or is struck.
P2P_UPLOAD_S = env_int("BIM_P2P_UPLOAD_S", 30)
# Basis points of peer-to-peer jobs whose payload and input are uploaded for audit (sentinels).
P2P_AUDIT_BP = env_int("BIM_P2P_AUDIT_BP", 100)
# The TURN server's own figures (registry.turn_usage): coturn publishes each ended
# allocation's bytes on this Redis (`--redis-statsdb`), `manage.py turn_usage` records them,
# and with BIM_TURN_STATS on a job whose peers report relayed bytes waits this long at
# verification for them, so settlement charges the smaller of the two figures.
P2P_TURN_STATS = env_bool("BIM_TURN_STATS", False)
# REDIS_URL read as settings.py reads it (env_str, empty when unset).
P2P_TURN_STATS_REDIS_URL = env_str("BIM_TURN_STATS_REDIS_URL", env_str("REDIS_URL") or "")
P2P_TURN_REALM = env_str("BIM_TURN_REALM", "*")
P2P_TURN_REPORT_S = env_int("BIM_TURN_REPORT_S", 10)
# The user socket (/ws/user/): signalling only, so small frames at a modest rate.
USER_SOCKET_MAX_MESSAGE_BYTES = env_int("BIM_USER_SOCKET_MAX_MESSAGE_BYTES", 80 * 1024)
USER_SOCKET_RATE_PER_S = float(env_int("BIM_USER_SOCKET_RATE_PER_S", 20))
USER_SOCKET_RATE_BURST = float(env_int("BIM_USER_SOCKET_RATE_BURST", 100))
