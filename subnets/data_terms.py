"""Users' opt-in per subnet (paper section 9, "Contributors see prompts and outputs. Users
opt-in per subnet"): each subnet's data-handling terms, versioned, and users'
acknowledgements of them. A job is taken only from a user who acknowledged the subnet's
terms at their current version (registry.submit); changing the terms bumps the version, so
every user acknowledges again. Modelled on contributors' license acceptances
(`subnets.services.eula_accept`): version, time and address recorded; withdrawal stamps the
row; history kept."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.urls import reverse
from django.utils import timezone

from bim_core.errors import ServiceError

from .models import Subnet, UserDataAcknowledgement

REFUSAL_CODE = "data_terms_not_acknowledged"

# What a contributor's device receives, per task family: the inputs of a job and the
# output it computes, in the user's words.
_FAMILY_DATA = {
    Subnet.TaskType.EMBEDDING: ("the texts you send", "their embedding vectors"),
    Subnet.TaskType.TEXT: ("your prompts (the whole conversation of a chat request)", "the generated text"),
    Subnet.TaskType.IMAGE: ("the images you send", "the upscaled images"),
}

_DEFAULT_TERMS = """\
Your jobs on this subnet run on contributors' devices: browsers and computers of people you
do not know, which BIM does not control.

What contributors see: {inputs}, and {outputs}. Each job goes to at least two contributors
(so that their results can be checked against each other), sometimes more when a result is
re-checked. Contributors do not see your account, your API key or your balance.

What BIM keeps: the registry stores each job's inputs and verified result with the job
(your receipt, disputes and audits need them). Contributors' software discards a job once
its result is sent, but BIM cannot verify what a device it does not control keeps.

Do not send what you would not show a stranger: personal data of others, secrets, keys or
passwords. Withdrawing this acknowledgement stops new jobs; it does not recall jobs already
computed."""


def default_terms(task_type: str) -> str:
    inputs, outputs = _FAMILY_DATA.get(task_type, ("the inputs of your jobs", "their outputs"))
    return _DEFAULT_TERMS.format(inputs=inputs, outputs=outputs)


def data_terms_text(subnet: Subnet) -> str:
    """The terms users of `subnet` acknowledge: the operator's, else its family's default."""
    return subnet.data_terms or default_terms(subnet.task_type)


def data_terms_summary(subnet: Subnet) -> str:
    """One sentence of what contributors see: the refusal's message and the CLI's prompt."""
    inputs, outputs = _FAMILY_DATA.get(subnet.task_type, ("the inputs of your jobs", "their outputs"))
    return f"contributors' devices see {inputs} and {outputs} on {subnet.slug}"


def data_terms_links(subnet: Subnet) -> dict[str, str]:
    """Where a user reads the terms and acknowledges them: the API (GET to read, POST to
    acknowledge) and the page for signed-in users."""
    return {
        "terms_url": reverse("subnet-data-terms", args=[subnet.slug]),
        "acknowledge_url": reverse("developer:data-terms", args=[subnet.slug]),
    }


@transaction.atomic
def data_terms_acknowledge(
    *, user: AbstractBaseUser, subnet: Subnet, version: int, ip: str | None
) -> tuple[UserDataAcknowledgement, bool]:
    """Record that `user` acknowledged `subnet`'s terms at `version`, the version they were
    shown: a stale one is refused (the terms changed since). Idempotent while it stands."""
    if version != subnet.data_terms_version:
        raise ServiceError(
            "data_terms_version_mismatch",
            f"the data-handling terms of {subnet.slug} are at version {subnet.data_terms_version}, not {version}: "
            "read them again",
            status=409,
        )
    standing = _standing(user=user, subnet=subnet).first()
    if standing is not None:
        return standing, False
    try:
        with transaction.atomic():
            created = UserDataAcknowledgement.objects.create(user=user, subnet=subnet, terms_version=version, ip=ip)
    except IntegrityError:
        # A concurrent acknowledgement (double click, two tabs) made it first.
        return _standing(user=user, subnet=subnet).get(), False
    return created, True


def data_terms_withdraw(*, user: AbstractBaseUser, subnet: Subnet) -> int:
    """Withdraw `user`'s acknowledgement of `subnet`'s terms: their next job there is
    refused. Rows are stamped, not deleted (the record of what was agreed and when)."""
    return UserDataAcknowledgement.objects.filter(user=user, subnet=subnet, withdrawn_at__isnull=True).update(
        withdrawn_at=timezone.now()
    )


def _standing(*, user: AbstractBaseUser, subnet: Subnet) -> QuerySet[UserDataAcknowledgement]:
    return UserDataAcknowledgement.objects.filter(
        user=user, subnet=subnet, terms_version=subnet.data_terms_version, withdrawn_at__isnull=True
    )


def data_terms_acknowledgement(*, user: AbstractBaseUser, subnet: Subnet) -> UserDataAcknowledgement | None:
    """The user's standing acknowledgement of the subnet's current terms, if any."""
    return _standing(user=user, subnet=subnet).first()


def data_terms_acknowledged(*, user: AbstractBaseUser, subnet: Subnet) -> bool:
    return _standing(user=user, subnet=subnet).exists()


def data_terms_acknowledged_many(*, user: AbstractBaseUser, subnets: Iterable[Subnet]) -> set[int]:
    """Ids of those `subnets` whose current terms `user` acknowledged, in one query (a batch
    submit names many subnets)."""
    subnets = list(subnets)
    if not subnets:
        return set()
    rows = acknowledged_versions(user_id=user.pk, subnet_ids=[subnet.pk for subnet in subnets])
    return data_terms_acknowledged_among(subnets, rows)


def acknowledged_versions(*, user_id: int, subnet_ids: list[int]) -> QuerySet[UserDataAcknowledgement, tuple[int, int]]:
    """(subnet id, terms version) of the user's standing acknowledgements on these subnets,
    for `data_terms_acknowledged_among` (registry.submit compiles a single subnet's once)."""
    return UserDataAcknowledgement.objects.filter(
        user_id=user_id, subnet_id__in=subnet_ids, withdrawn_at__isnull=True
    ).values_list("subnet_id", "terms_version")


def data_terms_acknowledged_among(subnets: Iterable[Subnet], rows: Iterable[tuple[int, int]]) -> set[int]:
    """Ids of those `subnets` whose current terms version is among `acknowledged_versions`'
    rows: an acknowledgement of an older version does not stand."""
    versions = {subnet.pk: subnet.data_terms_version for subnet in subnets}
    return {subnet_id for subnet_id, version in rows if versions.get(subnet_id) == version}


def data_terms_refusal(subnet: Subnet, label: str = "") -> ServiceError:
    """The refusal of a job whose user has not acknowledged the subnet's current terms:
    what contributors see, and where to read and acknowledge the terms."""
    links = data_terms_links(subnet)
    return ServiceError(
        REFUSAL_CODE,
        f"{label}{data_terms_summary(subnet)}: read and acknowledge its data-handling terms "
        f"(version {subnet.data_terms_version}) first, at {links['acknowledge_url']} or by POST {links['terms_url']}",
        status=403,
        extra={"subnet": subnet.slug, "terms_version": subnet.data_terms_version, **links},
    )
