"""The edit language: the operations a proposal may use to change the evolved code, as pydantic models.

Every operation addresses code by qualified name ("Block.forward", "ModelConfig.L_cycles"), not by text
position, so the interpreter (`edits.engine`) can prove that each edit hits exactly one node; `search_replace`
is the text fallback and must match exactly once. `edits.paths` decides which files an edit may touch.
Proposals (`proposals.schema`) carry a list of these edits.

Public API: the op models `ReplaceFunction`, `ReplaceClass`, `AddFunction`, `AddClass`, `SetValue`,
`AddImport`, `DeleteSymbol`, `SearchReplace`; `Edit` (their union, discriminated on `op`); `EDIT_OPS`;
`MAX_EDITS` (per proposal).
"""

from __future__ import annotations

import ast
import textwrap
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

QUALNAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
FILE_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_./-]*\.py$"
MODULE_PATTERN = r"^\.*[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$|^\.+$"
IDENT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
MAX_EDITS = 8


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_file(value: str) -> str:
    parts = value.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError("must be a normalised repo-relative posix path (no '', '.' or '..' components)")
    return value


def _check_code(value: str) -> str:
    try:
        ast.parse(textwrap.dedent(value))
    except SyntaxError as exc:
        raise ValueError(f"code does not parse: {exc.msg} (line {exc.lineno})") from None
    return value


FileField = Annotated[
    str, Field(pattern=FILE_PATTERN, description="Repo-relative posix path, e.g. hrm/model.py")
]
TargetField = Annotated[
    str,
    Field(
        pattern=QUALNAME_PATTERN,
        description="Qualified name: 'func', 'Class', 'Class.method', 'Outer.Inner.x'",
    ),
]


class _FileEdit(_Strict):
    file: FileField

    @field_validator("file")
    @classmethod
    def _file_ok(cls, value: str) -> str:
        return _check_file(value)


class _CodeEdit(_FileEdit):
    code: str = Field(min_length=1, description="Python source of one complete def or class")

    @field_validator("code")
    @classmethod
    def _code_ok(cls, value: str) -> str:
        return _check_code(value)


class ReplaceFunction(_CodeEdit):
    """Replace a function or method (decorators included) by a new definition with the same name."""

    op: Literal["replace_function"]
    target: TargetField


class ReplaceClass(_CodeEdit):
    """Replace a whole class by a new definition with the same name."""

    op: Literal["replace_class"]
    target: TargetField


class AddFunction(_CodeEdit):
    """Add a function after an anchor definition (a method if the anchor is a method), or at module end."""

    op: Literal["add_function"]
    after: TargetField | None = Field(
        default=None, description="Qualified name of the def/class to insert after; null = end of module"
    )


class AddClass(_CodeEdit):
    """Add a class after an anchor definition, or at module end."""

    op: Literal["add_class"]
    after: TargetField | None = Field(
        default=None, description="Qualified name of the def/class to insert after; null = end of module"
    )


class SetValue(_FileEdit):
    """Set the right-hand side of a module constant, class attribute or dataclass field default."""

    op: Literal["set_value"]
    target: TargetField
    value: str = Field(min_length=1, description="Python expression source, e.g. '4' or 'field(default=0.1)'")

    @field_validator("value")
    @classmethod
    def _value_ok(cls, value: str) -> str:
        try:
            ast.parse(value.strip(), mode="eval")
        except SyntaxError as exc:
            raise ValueError(f"value is not a Python expression: {exc.msg}") from None
        return value


class AddImport(_FileEdit):
    """`import module [as alias]` when name is null, else `from module import name [as alias]`."""

    op: Literal["add_import"]
    module: str = Field(pattern=MODULE_PATTERN, description="Module, e.g. 'math', 'torch.nn' or '.layers'")
    name: str | None = Field(default=None, pattern=IDENT_PATTERN, description="Imported name, or null")
    alias: str | None = Field(default=None, pattern=IDENT_PATTERN, description="'as' alias, or null")


class DeleteSymbol(_FileEdit):
    """Delete a function, class, module constant or class attribute."""

    op: Literal["delete_symbol"]
    target: TargetField


class SearchReplace(_FileEdit):
    """Fallback text edit: `search` must occur exactly once (whitespace-tolerant)."""

    op: Literal["search_replace"]
    search: str = Field(min_length=1, description="Exact text to find (must match once)")
    replace: str = Field(description="Replacement text")


Edit = Annotated[
    Union[
        ReplaceFunction, ReplaceClass, AddFunction, AddClass, SetValue, AddImport, DeleteSymbol, SearchReplace
    ],
    Field(discriminator="op"),
]

EDIT_OPS: tuple[str, ...] = (
    "replace_function",
    "replace_class",
    "add_function",
    "add_class",
    "set_value",
    "add_import",
    "delete_symbol",
    "search_replace",
)
