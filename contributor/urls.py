from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

app_name = "contributor"

urlpatterns = [
    path("", views.home, name="home"),
    path("signup/", views.sign_up, name="signup"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="contributor:login"), name="logout"),
    path("contribute/", views.dashboard, name="dashboard"),
    path("contribute/earnings/", views.earnings, name="earnings"),
    path("contribute/earnings/destination/", views.payout_destination, name="payout-destination"),
    path("contribute/subnets/<slug:slug>/", views.subnet_opt_in, name="opt-in"),
    path("contribute/subnets/<slug:slug>/leave/", views.subnet_opt_out, name="opt-out"),
    path("contribute/api/node/", views.node_register, name="node-register"),
    path("contribute/api/status/", views.status, name="status"),
]
