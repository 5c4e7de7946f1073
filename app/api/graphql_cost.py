"""A cost limit for GraphQL documents: lists inside lists multiply the work a small document asks for.

Before execution each operation's cost is estimated from its document and variables: a field costs 1 plus its
selection's cost times how many items it returns at most: its `limit` (or `count`) argument, else its default, for
the fields that page; a fixed guess for the lists without a bound (`jobs`, `jobTypes`). A document over
GRAPHQL_MAX_COST is refused before anything runs, saying its cost. Depth, aliases and tokens are bounded elsewhere
(app.api.graphql), which keeps this walk short.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    value_from_ast_untyped,
)
from strawberry.extensions import SchemaExtension

from app.platform.errors import AppError

# How many items a field returns at most when its arguments do not say: the fields that page, their defaults.
PAGED_DEFAULTS: dict[str, int] = {
    "jobLogs": 50,
    "allJobLogs": 100,
    "logs": 50,
    "log": 100,
    "activity": 50,
    "skippedFires": 50,
    "nextFires": 10,
    "schedulePreview": 10,
}
COUNT_ARGUMENTS = ("limit", "count")
# The list inside a page those fields return (JobLogPage.logs, RunLogPage.lines…): counted by the paged field.
PAGE_LISTS = frozenset({"logs", "lines", "fires"})
# Lists without a bound: what a deployment typically holds (a list of 100 jobs is the dashboard's usual page).
UNBOUNDED_GUESS: dict[str, int] = {"jobs": 100, "jobTypes": 20}


class CostLimit(SchemaExtension):
    def on_validate(self) -> Iterator[None]:
        yield
        context = self.execution_context
        document = context.graphql_document
        if document is None or context.pre_execution_errors:
            return
        if _unauthenticated(context.context):
            return  # without a valid token nothing runs but the refusal (UNAUTHENTICATED), whatever the document
        settings = context.context.runtime.settings
        fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        for operation in document.definitions:
            if not isinstance(operation, OperationDefinitionNode):
                continue
            if context.operation_name and operation.name and operation.name.value != context.operation_name:
                continue
            # A variable the request leaves out takes its default in the document.
            defaults = {
                d.variable.name.value: value_from_ast_untyped(d.default_value)
                for d in operation.variable_definitions or ()
                if d.default_value is not None
            }
            variables = {**defaults, **(context.variables or {})}
            cost = _selection_cost(operation.selection_set, fragments, variables)
            if cost > settings.graphql_max_cost:
                raise GraphQLError(
                    f"Query costs {cost}, more than GRAPHQL_MAX_COST ({settings.graphql_max_cost}): ask for fewer "
                    "items per list (`limit`), or fewer nested lists",
                    extensions={"code": "BAD_USER_INPUT"},
                )


def _unauthenticated(ctx: Any) -> bool:
    try:
        ctx.user()
    except AppError:
        return True
    return False


def _selection_cost(
    selection_set: SelectionSetNode | None,
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: Mapping[str, Any],
    seen: frozenset[str] = frozenset(),
    in_page: bool = False,
) -> int:
    """`in_page`: this selection is a page's (the paged field above counted its items)."""
    if selection_set is None:
        return 0
    total = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            name = selection.name.value
            if in_page and name in PAGE_LISTS:
                total += 1 + _selection_cost(selection.selection_set, fragments, variables, seen)
                continue
            paged = name in PAGED_DEFAULTS
            children = _selection_cost(selection.selection_set, fragments, variables, seen, in_page=paged)
            total += 1 + _items(selection, variables) * children
        elif isinstance(selection, InlineFragmentNode):
            total += _selection_cost(selection.selection_set, fragments, variables, seen, in_page)
        elif isinstance(selection, FragmentSpreadNode):
            fragment_name = selection.name.value
            fragment = fragments.get(fragment_name)
            if fragment is not None and fragment_name not in seen:  # a cycle is the validator's to refuse
                nested = seen | {fragment_name}
                total += _selection_cost(fragment.selection_set, fragments, variables, nested, in_page)
    return total


def _items(field: FieldNode, variables: Mapping[str, Any]) -> int:
    name = field.name.value
    for argument in field.arguments or ():
        if argument.name.value not in COUNT_ARGUMENTS:
            continue
        value = argument.value
        if isinstance(value, IntValueNode):
            return max(1, int(value.value))
        if isinstance(value, VariableNode):
            given = variables.get(value.name.value)
            # An Int variable may arrive as an integral float (100.0): GraphQL's Int takes it as 100.
            if isinstance(given, float) and given.is_integer():
                given = int(given)
            if isinstance(given, int) and not isinstance(given, bool):
                return max(1, given)
    return PAGED_DEFAULTS.get(name) or UNBOUNDED_GUESS.get(name) or 1
