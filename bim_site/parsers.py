"""The API's request parser (REST_FRAMEWORK's DEFAULT_PARSER_CLASSES). Its own module: the
parser setting is imported while DRF's views module loads, so it cannot live in a module
of views."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class ApiJSONParser(JSONParser):
    """DRF's JSON parser, refusing JSON nested past the decoder's recursion limit (a
    RecursionError, which DRF's parser lets through as a 500) as a parse error."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
