"""TensorRT's enums as its Python bindings make them (pybind11 `py::enum_` of C++ `enum class`es).

What the real ones do, read from tensorrt-cu12-bindings 10.16.1.11 and tensorrt-cu13-bindings
11.4.0.106 imported over stub libraries (no GPU, no libnvinfer), and what these copy:

* a member never equals an int (`Severity.ERROR == 1` is False) nor a member of another enum;
* `int(member)` and `operator.index(member)` give its value; `1 << member` is a TypeError;
* the class is not iterable and has no len(); `__members__` maps names to members;
* `Enum(value)` gives the member of that value (an unknown value a `Type.???` member);
* Severity, BuilderFlag and NetworkDefinitionCreationFlag order among their own members
  (`py::arithmetic`) and refuse to order against anything else ("Expected an enumeration of
  matching type!"); TensorIOMode, DataType and MemoryPoolType do not order at all;
* a function that takes an enum refuses an int (TypeError): `check` does that for the fakes.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from types import MappingProxyType
from typing import Any, ClassVar


class PybindEnum:
    """One member; made only by :func:`pybind_enum` (or looked up by value, as pybind11 does)."""

    __slots__ = ("name", "value")
    _by_value: ClassVar[dict[int, PybindEnum]] = {}  # each enum class gets its own (pybind_enum)
    arithmetic: ClassVar[bool] = False

    def __new__(cls, value: Any) -> PybindEnum:
        if isinstance(value, PybindEnum) or not isinstance(value, int):
            raise TypeError(f"__init__(): incompatible constructor arguments: {cls.__name__}(value: int)")
        return cls._by_value.get(value) or cls._make("???", value)

    @classmethod
    def _make(cls, name: str, value: int) -> PybindEnum:
        member = object.__new__(cls)
        object.__setattr__(member, "name", name)
        object.__setattr__(member, "value", value)
        return member

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} members are read-only")

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __hash__(self) -> int:
        return hash(self.value)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.value == self.value  # type: ignore[attr-defined]

    def __ne__(self, other: object) -> bool:
        return not self == other

    def _order(self, other: object, op: Callable[[int, int], bool]) -> bool:
        if not self.arithmetic:
            return NotImplemented  # Python then raises "'<' not supported between instances", as here
        if type(other) is not type(self):
            raise TypeError("Expected an enumeration of matching type!")
        return op(self.value, other.value)  # type: ignore[attr-defined]

    def __lt__(self, other: object) -> bool:
        return self._order(other, operator.lt)

    def __le__(self, other: object) -> bool:
        return self._order(other, operator.le)

    def __gt__(self, other: object) -> bool:
        return self._order(other, operator.gt)

    def __ge__(self, other: object) -> bool:
        return self._order(other, operator.ge)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {self.value}>"

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


def pybind_enum(name: str, members: dict[str, int], *, arithmetic: bool = False) -> type:
    """A new enum class `name` with `members` (name -> value)."""
    cls = type(name, (PybindEnum,), {"__slots__": (), "arithmetic": arithmetic, "_by_value": {}})
    made = {key: cls._make(key, value) for key, value in members.items()}
    for key, member in made.items():
        setattr(cls, key, member)
        cls._by_value.setdefault(member.value, member)
    cls.__members__ = MappingProxyType(made)
    return cls


def check(value: Any, enum: type, what: str) -> None:
    """Refuse what pybind11 refuses where a function takes `enum`: anything but its members."""
    if type(value) is not enum:
        raise TypeError(f"{what}(): incompatible function arguments: expected {enum.__name__}, "
                        f"got {type(value).__name__} {value!r}")


# The enums tests/fake_trt.py uses, with the bindings' values.
TensorIOMode = pybind_enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
DataType = pybind_enum("DataType", {"FLOAT": 0, "HALF": 1, "BF16": 7})
MemoryPoolType = pybind_enum("MemoryPoolType", {"WORKSPACE": 0})
Severity = pybind_enum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4},
                       arithmetic=True)
# Each TensorRT major's flags (the bindings' __members__, PREFER_* included: a bit they know is not refused).
CREATION_FLAGS = {10: {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, "PREFER_JIT_PYTHON_PLUGINS": 2,
                       "PREFER_AOT_PYTHON_PLUGINS": 3},
                  11: {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2}}
BUILDER_FLAGS = {10: {"FP16": 0, "TF32": 6, "BF16": 17}, 11: {"TF32": 6}}  # those tsf-trt may name
