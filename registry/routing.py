from django.urls import path

from .consumers import NodeConsumer

websocket_urlpatterns = [path("ws/node/", NodeConsumer.as_asgi())]
