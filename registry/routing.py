from django.urls import path

from .consumers import NodeConsumer
from .user_socket import UserSocketConsumer

websocket_urlpatterns = [
    path("ws/node/", NodeConsumer.as_asgi()),
    path("ws/user/", UserSocketConsumer.as_asgi()),
]
