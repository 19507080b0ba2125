"""`field__any=values`: membership in a long list of values as PostgreSQL's
`field = ANY(%s)`, the values bound as one array parameter.

Django's `__in` prepares, checks and binds every value on its own and psycopg then parses
a query with as many placeholders: for the lists of a few hundred node ids that a batch
of hellos or disconnects carries, that cost more than running the statements
(bench/websockets.py). Other databases (SQLite in embedded mode) get a plain IN."""

from __future__ import annotations

from typing import Any

from django.db.models import Field, ForeignObject
from django.db.models.lookups import In, Lookup


class AnyOf(Lookup):
    lookup_name = "any"
    prepare_rhs = False  # each value is prepared once, below, not by the lookup machinery

    def get_prep_lookup(self) -> Any:
        return list(self.rhs)

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, Any]:
        return compiler.compile(In(self.lhs, self.rhs))

    def as_postgresql(self, compiler: Any, connection: Any) -> tuple[str, Any]:
        lhs, params = self.process_lhs(compiler, connection)
        field = self.lhs.output_field
        values = [field.get_db_prep_value(value, connection, prepared=False) for value in self.rhs]
        return f"{lhs} = ANY(%s)", (*params, values)


Field.register_lookup(AnyOf)
ForeignObject.register_lookup(AnyOf)  # foreign keys look theirs up apart (node_id__any)
