"""What one GraphQL request may ask for, checked before anything runs (a refusal is an HTTP 400).

- Size: the body at most :data:`MAX_BODY_BYTES`, the query text :data:`MAX_QUERY_BYTES`, and
  :data:`MAX_TOKENS` lexical tokens (graphql-core's parser stops counting there).
- Depth: fields nest at most :data:`MAX_DEPTH` deep (a root field is depth 1).
- Fields and aliases: at most :data:`MAX_FIELDS` field selections and :data:`MAX_ALIASES` aliases, counted
  with every fragment spread expanded where it is used (so a fragment used twice counts twice).
- Cost: every selected field costs 1 times the sizes of the lists around it. A list's size is its
  ``first`` argument (default and maximum in :data:`LIST_SIZES`), ``usage``'s is its ``limit`` (by default
  the bucket width's), and a list without an argument counts as its :data:`LIST_ESTIMATES` entry. The sum
  may reach :data:`MAX_COST`.
- Introspection (``__schema``, ``__type``) is free of cost and of the depth limit, which its standard query
  exceeds by design (``ofType`` nested eight deep), but it may nest :data:`MAX_INTROSPECTION_LISTS` lists
  (``types { fields { args } }``, what GraphiQL's query asks), none inside itself, and
  :data:`MAX_INTROSPECTION_DEPTH` fields: a list repeated inside itself (``fields { type { fields ... } }``)
  multiplies the answer by the schema's size per level.

:func:`check` runs on a document that passed graphql-core's validation (so fragments have no cycles).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLObjectType,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    StringValueNode,
    VariableNode,
    get_named_type,
    get_nullable_type,
    is_list_type,
    is_object_type,
)

from bitnet_actor.services.billing.usage import WIDTHS

if TYPE_CHECKING:
    from graphql import DocumentNode, GraphQLSchema, NamedTypeNode, SelectionSetNode, ValueNode

__all__ = [
    "LIST_ESTIMATES",
    "LIST_SIZES",
    "MAX_ALIASES",
    "MAX_BODY_BYTES",
    "MAX_COST",
    "MAX_DEPTH",
    "MAX_FIELDS",
    "MAX_INTROSPECTION_DEPTH",
    "MAX_INTROSPECTION_LISTS",
    "MAX_QUERY_BYTES",
    "MAX_TOKENS",
    "ListSize",
    "check",
]

MAX_BODY_BYTES: Final = 64 * 1024
MAX_QUERY_BYTES: Final = 16 * 1024
MAX_TOKENS: Final = 3000  # GraphiQL's introspection query is about 330
MAX_DEPTH: Final = 8
MAX_FIELDS: Final = 500  # GraphiQL's introspection query, expanded, is about 330 selections
MAX_ALIASES: Final = 30
MAX_COST: Final = 5000
MAX_INTROSPECTION_DEPTH: Final = 16
MAX_INTROSPECTION_LISTS: Final = 3


class ListSize(NamedTuple):
    """A list field's ``first`` argument: its default and its largest allowed value."""

    default: int
    maximum: int


LIST_SIZES: Final[dict[str, ListSize]] = {
    "Query.organizations": ListSize(10, 100),
    "Organization.members": ListSize(100, 500),
    "Organization.keys": ListSize(100, 500),
    "Organization.models": ListSize(20, 100),
    "Model.versions": ListSize(10, 100),
    "Organization.jobs": ListSize(20, 100),
    "Organization.invoices": ListSize(12, 120),
}
LIST_ESTIMATES: Final[dict[str, int]] = {
    "ModelVersion.lineage": 5,
    "UsagePage.buckets": 1,  # the page's size is counted on Organization.usage (its limit)
    "UsageBucket.results": 5,
    "Invoice.lines": 10,
}
_UNKNOWN_LIST: Final = 10
_INTROSPECTION_ROOTS: Final = frozenset({"__schema", "__type"})


class _TooMuch(Exception):
    """Stops the walk at the first limit passed: counting further is wasted work."""


@dataclass
class _Walk:
    schema: GraphQLSchema
    fragments: dict[str, FragmentDefinitionNode]
    variables: dict[str, Any]
    defaults: dict[str, ValueNode] = field(default_factory=dict)
    fields: int = 0
    aliases: int = 0
    cost: int = 0
    errors: list[GraphQLError] = field(default_factory=list)

    def refuse(self, message: str, node: FieldNode) -> None:
        self.errors.append(GraphQLError(message, node, extensions={"code": "QUERY_TOO_COMPLEX"}))
        raise _TooMuch

    def selections(
        self,
        parent: GraphQLObjectType | None,
        selection_set: SelectionSetNode,
        *,
        depth: int,
        scale: int,
        lists: frozenset[str] | None,
    ) -> None:
        """Walk ``selection_set`` of a ``parent`` object; ``lists`` is None outside introspection, else the
        introspection lists around it."""
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                self.field(parent, selection, depth=depth, scale=scale, lists=lists)
                continue
            condition: NamedTypeNode | None
            if isinstance(selection, FragmentSpreadNode):
                fragment = self.fragments[selection.name.value]
                inner, condition = fragment.selection_set, fragment.type_condition
            else:
                assert isinstance(selection, InlineFragmentNode)
                inner, condition = selection.selection_set, selection.type_condition
            typed = self.schema.get_type(condition.name.value) if condition is not None else parent
            self.selections(typed if is_object_type(typed) else None, inner, depth=depth, scale=scale, lists=lists)

    def field(
        self, parent: GraphQLObjectType | None, node: FieldNode, *, depth: int, scale: int, lists: frozenset[str] | None
    ) -> None:
        name = node.name.value
        self.fields += 1
        if self.fields > MAX_FIELDS:
            self.refuse(f"the query selects more than {MAX_FIELDS} fields", node)
        if node.alias is not None:
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                self.refuse(f"the query uses more than {MAX_ALIASES} aliases", node)
        if lists is None and name in _INTROSPECTION_ROOTS:
            lists, depth = frozenset(), 1
        if lists is not None:
            self.introspection(node, depth=depth, lists=lists)
            return
        if depth > MAX_DEPTH:
            self.refuse(f"fields nest deeper than {MAX_DEPTH} levels", node)
        self.cost += scale
        if self.cost > MAX_COST:
            self.refuse(f"the query costs more than {MAX_COST} (fields times the sizes of the lists around them)", node)
        definition = parent.fields.get(name) if parent is not None else None
        if node.selection_set is None or parent is None or definition is None:
            return
        named = get_named_type(definition.type)
        is_list = is_list_type(get_nullable_type(definition.type))
        factor = self.size(f"{parent.name}.{name}", node, is_list=is_list)
        child = named if is_object_type(named) else None
        self.selections(child, node.selection_set, depth=depth + 1, scale=scale * factor, lists=None)

    def introspection(self, node: FieldNode, *, depth: int, lists: frozenset[str]) -> None:
        if depth > MAX_INTROSPECTION_DEPTH:
            self.refuse(f"introspection fields nest deeper than {MAX_INTROSPECTION_DEPTH} levels", node)
        if node.selection_set is None:
            return
        name = node.name.value
        if name in _INTROSPECTION_LISTS:
            if name in lists:
                self.refuse(f"introspection nests {name} inside {name}", node)
            lists |= {name}
            if len(lists) > MAX_INTROSPECTION_LISTS:
                self.refuse(f"introspection nests more than {MAX_INTROSPECTION_LISTS} lists", node)
        self.selections(None, node.selection_set, depth=depth + 1, scale=0, lists=lists)

    def size(self, qualified: str, node: FieldNode, *, is_list: bool) -> int:
        """How many times this field's selections run, per time the field itself does."""
        if qualified == "Organization.usage":
            limit = self.argument(node, "limit")
            if isinstance(limit, int):
                return max(limit, 1)
            width = self.argument(node, "bucketWidth")
            return WIDTHS[width][1] if isinstance(width, str) and width in WIDTHS else WIDTHS["1d"][1]
        if qualified in LIST_SIZES:
            first = self.argument(node, "first")
            return max(first, 1) if isinstance(first, int) else LIST_SIZES[qualified].default
        if not is_list:
            return 1
        return LIST_ESTIMATES.get(qualified, _UNKNOWN_LIST)

    def argument(self, node: FieldNode, name: str) -> object:
        """An argument's literal or variable value as given (None when absent: the field's default applies)."""
        for argument in node.arguments or ():
            if argument.name.value == name:
                return self.value(argument.value)
        return None

    def value(self, node: ValueNode) -> object:
        if isinstance(node, VariableNode):
            given = self.variables.get(node.name.value)
            if given is not None:
                return given
            default = self.defaults.get(node.name.value)
            return self.value(default) if default is not None else None
        if isinstance(node, IntValueNode):
            return int(node.value)
        if isinstance(node, StringValueNode):
            return node.value
        return None


_INTROSPECTION_LISTS: Final = frozenset(
    {"types", "fields", "args", "inputFields", "interfaces", "possibleTypes", "enumValues", "directives"}
)


def check(schema: GraphQLSchema, document: DocumentNode, variables: dict[str, Any]) -> list[GraphQLError]:
    """The limits ``document`` exceeds (each operation on its own), as errors; empty when within them.

    Args:
        schema: The schema the document was validated against.
        document: A validated document.
        variables: The request's variables (sizes given through variables count at their value).
    """
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    errors: list[GraphQLError] = []
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        walk = _Walk(schema, fragments, variables)
        for variable in definition.variable_definitions or ():
            if variable.default_value is not None:
                walk.defaults[variable.variable.name.value] = variable.default_value
        with contextlib.suppress(_TooMuch):
            walk.selections(schema.query_type, definition.selection_set, depth=1, scale=1, lists=None)
        errors.extend(walk.errors)
    return errors
