import mimetypes
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bim_site.settings")
# Django must be set up before the consumers (and their models) are imported: what
# django.core.asgi.get_asgi_application does, with the registry's handler.
django.setup(set_prefix=False)

from bim_site.http_handler import RegistryASGIHandler  # noqa: E402

django_asgi_app = RegistryASGIHandler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from bim_site import sqlstats  # noqa: E402
from bim_site.middleware import isolation_headers  # noqa: E402
from bim_site.proxies import TrustedProxyMiddleware  # noqa: E402
from registry.auth import NodeSocketStack  # noqa: E402
from registry.routing import websocket_urlpatterns  # noqa: E402


class IsolatedStaticFilesHandler(ASGIStaticFilesHandler):
    """/static/ from the apps' static folders (no collectstatic), with the cross-origin
    isolation headers the contributor's workers and WASM need: the staticfiles handler
    answers before any middleware runs."""

    async def get_response_async(self, request):  # type: ignore[no-untyped-def]
        return isolation_headers(request.path, await super().get_response_async(request))


# Module scripts and streamed WASM compilation need these types, whatever the system's table says.
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("application/wasm", ".wasm")

sqlstats.install_from_env()

http_app = IsolatedStaticFilesHandler(django_asgi_app) if settings.SERVE_STATIC else django_asgi_app

# The client's address and scheme are settled first (behind a trusted reverse proxy, its
# X-Forwarded-For and X-Forwarded-Proto), for HTTP and websockets alike.
application = TrustedProxyMiddleware(
    ProtocolTypeRouter(
        {
            "http": http_app,
            "websocket": NodeSocketStack(URLRouter(websocket_urlpatterns)),
        }
    )
)
