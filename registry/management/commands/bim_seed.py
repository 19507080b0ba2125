"""Seed a registry so the demo needs no clicking: the Apache-2.0 license, the default
embeddings subnet (packaged from its PyPI packages), an operator superuser and, with
--demo, a paying user (its subnets' data terms acknowledged) and contributor accounts with API
tokens and accepted licenses."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from rest_framework.authtoken.models import Token

from bim_core.money import MICRO
from ledger.services import credits_top_up
from registry.honeypots import honeypot_pool_refresh
from registry.lifecycle import subnet_state_set
from subnets import data_terms, defaults, services
from subnets.models import License, Subnet


class Command(BaseCommand):
    help = "Create the default subnet, an admin and (with --demo) demo accounts."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--demo", action="store_true", help="also create demo user and contributors")
        parser.add_argument("--contributors", default="alice,bob,carol")
        parser.add_argument("--credits", type=int, default=100, help="demo user's top-up, in credits")
        parser.add_argument("--json", action="store_true", help="print accounts and tokens as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        license_, _ = License.objects.get_or_create(
            slug=defaults.APACHE_2["slug"], version=defaults.APACHE_2["version"], defaults=defaults.APACHE_2
        )
        exists = Subnet.objects.filter(slug=defaults.EMBEDDINGS_SLUG).exists()
        subnet = services.subnet_package(
            slug=defaults.EMBEDDINGS_SLUG,
            model=defaults.EMBEDDINGS_MODEL,
            tokenizer=defaults.EMBEDDINGS_TOKENIZER,
            # An existing subnet keeps what operators set in admin; only its files are refreshed.
            defaults=None if exists else {**defaults.embeddings_subnet_settings(), "license": license_},
        )
        services.benchmark_reference_compute(
            subnet=subnet, inputs={"texts": defaults.BENCHMARK_TEXTS}, pool=defaults.benchmark_pool()
        )
        honeypot_pool_refresh(subnet=subnet, pool=defaults.honeypot_pool())
        subnet = self._activated(subnet)
        out: dict[str, Any] = {"subnet": subnet.slug, "model_checksum": subnet.model_checksum}
        out["admin"] = self._admin()
        if options["demo"]:
            out["user"] = self._account("demo-user", credits=options["credits"], subnet=None)
            out["contributors"] = {
                name: self._account(name, credits=0, subnet=subnet)
                for name in options["contributors"].split(",")
                if name
            }
            text_subnet = self._text_subnet()
            out["text_subnet"] = text_subnet.slug
            for name in out["contributors"]:
                self._account(name, credits=0, subnet=text_subnet)
            image_subnet = self._image_subnet()
            out["image_subnet"] = image_subnet.slug
            for name in out["contributors"]:
                self._account(name, credits=0, subnet=image_subnet)
            # The demo user submits at once: its acknowledgement of the subnets' data terms
            # stands in for the one a real user gives (developer pages, `bim`, the API).
            self._acknowledge_data_terms("demo-user", [subnet, text_subnet, image_subnet])
        if options["json"]:
            self.stdout.write(json.dumps(out))
        else:
            self.stdout.write(f"subnet {subnet.slug} ready (model {subnet.model_checksum[:16]}…)")
            self.stdout.write(f"admin: {out['admin']['username']} / {out['admin']['password'] or '(unchanged)'}")

    def _text_subnet(self) -> Subnet:
        """The SmolLM2 text subnet, with its benchmark and honeypot answers from the
        registry's own generation (about ten seconds on one core)."""
        return self._subnet(
            license_terms=defaults.SMOLLM2_LICENSE,
            slug=defaults.TEXT_SLUG,
            model=defaults.TEXT_MODEL,
            settings=defaults.text_subnet_settings,
            benchmark_inputs=defaults.TEXT_BENCHMARK_INPUTS,
            benchmark_pool=defaults.TEXT_BENCHMARK_POOL,
            honeypots=defaults.text_honeypot_pool,
        )

    def _image_subnet(self) -> Subnet:
        """The waifu2x UpConv7 2x subnet (an ONNX model, no tokenizer), with its benchmark
        and honeypot answers from the registry's own runs (a few seconds on one core)."""
        return self._subnet(
            license_terms=defaults.WAIFU2X_LICENSE,
            slug=defaults.IMAGE_SLUG,
            model=defaults.IMAGE_MODEL,
            settings=defaults.image_subnet_settings,
            benchmark_inputs=defaults.image_benchmark_inputs(),
            benchmark_pool=defaults.image_benchmark_pool(),
            honeypots=defaults.image_honeypot_pool,
        )

    def _subnet(
        self,
        *,
        license_terms: dict[str, Any],
        slug: str,
        model: Any,
        settings: Callable[[], dict[str, Any]],
        benchmark_inputs: dict[str, Any],
        benchmark_pool: list[dict[str, Any]],
        honeypots: Callable[[], list[dict[str, Any]]],
    ) -> Subnet:
        """A subnet with no tokenizer file (none, or inside the model, covered by its
        checksum): packaged, benchmark reference computed, honeypot pool refreshed."""
        license_, _ = License.objects.get_or_create(
            slug=license_terms["slug"], version=license_terms["version"], defaults=license_terms
        )
        exists = Subnet.objects.filter(slug=slug).exists()
        subnet = services.subnet_package(
            slug=slug,
            model=model,
            tokenizer=None,
            # An existing subnet keeps what operators set in admin; only its files are refreshed.
            defaults=None if exists else {**settings(), "license": license_},
        )
        services.benchmark_reference_compute(subnet=subnet, inputs=benchmark_inputs, pool=benchmark_pool)
        honeypot_pool_refresh(subnet=subnet, pool=honeypots())
        return self._activated(subnet)

    def _activated(self, subnet: Subnet) -> Subnet:
        """A new subnet, its reference computed, is activated; one an operator paused or
        retired stays so."""
        if subnet.state != Subnet.State.DRAFT:
            return subnet
        return subnet_state_set(subnet_id=subnet.pk, to=Subnet.State.ACTIVE, operator=None, reason="bim_seed")

    def _admin(self) -> dict[str, str]:
        User = get_user_model()
        username = os.environ.get("BIM_ADMIN_USER", "admin")
        user = User.objects.filter(username=username).first()
        if user is not None:
            return {"username": username, "password": ""}
        password = os.environ.get("BIM_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        return {"username": username, "password": password}

    def _acknowledge_data_terms(self, username: str, subnets: list[Subnet]) -> None:
        user = get_user_model().objects.get(username=username)
        for subnet in subnets:
            data_terms.data_terms_acknowledge(user=user, subnet=subnet, version=subnet.data_terms_version, ip=None)

    def _account(self, username: str, *, credits: int, subnet: Subnet | None) -> dict[str, Any]:
        User = get_user_model()
        user, _ = User.objects.get_or_create(username=username)
        token, _ = Token.objects.get_or_create(user=user)
        if credits:
            credits_top_up(user=user, amount=credits * MICRO, idempotency_key=f"seed:{username}", reason="demo seed")
        if subnet is not None:
            services.eula_accept(user=user, subnet=subnet, license_version=subnet.license.version, ip=None)
        return {"username": username, "token": token.key}
