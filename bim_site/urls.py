from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from billing import api as billing_api
from bim_site.metrics import metrics
from developer import openai_api
from registry import api as registry_api
from registry import api_market, p2p_api
from subnets import api as subnets_api
from subnets import views as subnets_views

api_v1 = [
    path("jobs/", registry_api.JobListCreateApi.as_view(), name="jobs"),
    path("jobs/batch/", registry_api.JobBatchApi.as_view(), name="jobs-batch"),
    path("jobs/<uuid:job_id>/", registry_api.JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<uuid:job_id>/cancel/", registry_api.JobCancelApi.as_view(), name="job-cancel"),
    path("jobs/<uuid:job_id>/delivered/", p2p_api.JobDeliveredApi.as_view(), name="job-delivered"),
    path("jobs/<uuid:job_id>/inputs/", p2p_api.JobInputsApi.as_view(), name="job-inputs"),
    path("balance/", api_market.BalanceApi.as_view(), name="balance"),
    path("withdrawals/", api_market.WithdrawalListCreateApi.as_view(), name="withdrawals"),
    path("nodes/", api_market.NodeRegisterApi.as_view(), name="nodes"),
    path("registry/", api_market.RegistryInfoApi.as_view(), name="registry-info"),
    path("subnets/", api_market.SubnetListApi.as_view(), name="subnets"),
    path("subnets/<slug:slug>/accept-license/", subnets_api.EulaAcceptApi.as_view(), name="accept-license"),
    path("subnets/<slug:slug>/data-terms/", subnets_api.DataTermsApi.as_view(), name="subnet-data-terms"),
    path("payments/checkout/", billing_api.CheckoutApi.as_view(), name="payments-checkout"),
    path("payments/stripe/webhook/", billing_api.StripeWebhookApi.as_view(), name="payments-stripe-webhook"),
]

# OpenAI's paths, for its clients with base_url=<registry>/v1 (developer/openai_api.py).
openai_v1 = [
    path("models", openai_api.models, name="openai-models"),
    path("embeddings", openai_api.embeddings, name="openai-embeddings"),
    path("chat/completions", openai_api.chat_completions, name="openai-chat-completions"),
    path("completions", openai_api.completions, name="openai-completions"),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("v1/", include(openai_v1)),
    path("developer/", include("developer.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves its init script at ?script: no inline script, so the CSP holds.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path("subnets/<slug:slug>/manifest.json", subnets_views.manifest, name="subnet-manifest"),
    path("artifacts/chunks/<str:sha256>", subnets_views.chunk, name="artifact-chunk"),
    path("metrics", metrics, name="prometheus-django-metrics"),
    path("", include("contributor.urls")),
]

# JSON under /api/, Django's pages elsewhere (bim_site/errors.py).
handler400 = "bim_site.errors.bad_request"
handler403 = "bim_site.errors.permission_denied"
handler404 = "bim_site.errors.page_not_found"
handler500 = "bim_site.errors.server_error"
