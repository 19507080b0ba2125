from django.urls import path

from . import views

app_name = "developer"

urlpatterns = [
    path("", views.developer, name="home"),
    path("keys/", views.key_create, name="key-create"),
    path("keys/<int:key_id>/revoke/", views.key_revoke, name="key-revoke"),
    path("vouchers/", views.voucher_redeem, name="voucher-redeem"),
    path("data-terms/<slug:slug>/", views.data_terms_page, name="data-terms"),
]
