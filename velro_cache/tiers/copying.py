"""How L1 hands out values: an independent copy per ``get``, made cheaply.

LocMemCache unpickles on every hit so a caller that mutates what it got never
changes what the next caller gets. L1 keeps that guarantee without decoding: at
``set`` time it inspects the value once and plans the cheapest copy that is
still fully independent:

* an immutable tree (str, numbers, datetimes, tuples of those, ...) is handed
  out as it is;
* a dict, list or set whose contents are immutable gets a shallow ``copy()``
  (0.04 us for a small dict against 0.2 us for a msgpack decode);
* nested containers get a copier composed of those, copying only the mutable
  nodes;
* a plain dataclass (no custom copy or pickle hooks, no slots) is copied as
  ``copy.copy`` would, with its ``__dict__`` planned like a dict; a frozen one
  of immutable fields needs no copy;
* anything else (other classes, huge or deep trees) is held serialized and
  decoded on every hit, exactly like LocMemCache.

A plan is a *reader*: ``None`` (use the object itself) or a callable that
turns the stored object into the value to return. The L1 payload is always
``(reader, stored)``, so the hit path is one tuple unpack and one call.

Copiers are shared by shape: two dicts with the same keys holding mutable
values of the same shapes get the very same copier (``_shared``), so a list of
records of one shape is copied by one comprehension over one copier instead of
a zip over thirty.

Planning walks the whole value, which on a page of records costs more than
the Redis round trip that fetched it. A value that arrives serialized (an L2
hit, or a write whose body was encoded for Redis anyway) is therefore held as
its body with ``plan_on_first_read``: most such values are never read again in
this process, and one that is pays the walk once, on its first L1 hit, and is
copied from then on.
"""

from __future__ import annotations

import datetime
import sys
import uuid
from collections.abc import Callable, Hashable
from decimal import Decimal
from typing import Any

from ..exceptions import NotPlannable

Copier = Callable[[Any], Any]
Reader = Copier | None

IMMUTABLE_LEAVES = frozenset(
    {
        str, bytes, int, float, complex, bool, type(None),
        datetime.datetime, datetime.date, datetime.time, datetime.timedelta, datetime.timezone,
        Decimal, uuid.UUID,
    }
)  # fmt: skip

# Past this many container nodes, building and running a plan costs more than
# a decode does; such values are held serialized.
MAX_PLAN_NODES = 2000

# Copiers by shape; bounded because shapes come from data (cleared when full:
# a copier made again is only a little planning time).
SHARED_COPIERS_LIMIT = 4096
_copiers: dict[Hashable, Copier] = {}


def _shared(shape: Hashable, make: Callable[[], Copier]) -> Copier:
    """The one copier for ``shape``, made on first need."""
    copier = _copiers.get(shape)
    if copier is None:
        if len(_copiers) >= SHARED_COPIERS_LIMIT:
            _copiers.clear()
        copier = _copiers[shape] = make()
    return copier


def plan_on_first_read(decoder: Copier, adopt: Callable[[Any, Reader, Any, int], None]) -> Copier:
    """A reader for values held serialized until their first L1 read, shared by every such entry.

    The entry stores ``held = (key, body)``; the reader is made once per codec
    and store, not per entry, because making two closures for every value an
    L2 hit promotes was most of a promotion's cost. The first read decodes
    (what LocMemCache does on every read) and plans the copy from what it
    decoded; ``adopt(held, reader, stored, size)`` then puts the planned
    payload in place of the entry still holding ``held`` (or, for a value that
    cannot be planned, the decoder and the body, so planning is never tried
    twice). The value the caller gets is the decoded one: the stored copy is
    made apart from it.
    """

    def first_read(held: Any) -> Any:
        body = held[1]
        value = decoder(body)
        try:
            reader, size = plan_copy(value)
        except NotPlannable:
            adopt(held, decoder, body, sys.getsizeof(body))
        else:
            adopt(held, reader, value if reader is None else reader(value), size)
        return value

    return first_read


def plan_copy(value: Any) -> tuple[Reader, int]:
    """The reader for ``value`` and an estimate of its memory in bytes."""
    budget = [MAX_PLAN_NODES]
    try:
        return _plan(value, budget)
    except RecursionError:
        # A self-referencing or very deep value (350 levels do it): held
        # serialized, as LocMemCache holds everything, never a failed set.
        raise NotPlannable("too deep or self-referencing") from None


def _plan(value: Any, budget: list[int]) -> tuple[Reader, int]:
    kind = type(value)
    if kind in IMMUTABLE_LEAVES:
        return None, sys.getsizeof(value)
    budget[0] -= 1
    if budget[0] < 0:
        raise NotPlannable("too many nodes")
    if kind is dict:
        return _plan_dict(value, budget)
    if kind is list:
        return _plan_list(value, budget)
    if kind is tuple:
        return _plan_tuple(value, budget)
    if kind is set or kind is frozenset:
        # Members of a set are hashable; we still require known immutable ones.
        size = sys.getsizeof(value)
        for member in value:
            reader, member_size = _plan(member, budget)
            if reader is not None:
                raise NotPlannable("set of mutable members")
            size += member_size
        return (set.copy if kind is set else None), size
    if _is_plain_dataclass(kind):
        return _plan_dataclass(value, kind, budget)
    raise NotPlannable(kind.__name__)


# Classes that say how they copy or pickle themselves keep that behaviour: they
# are held serialized instead.
_CUSTOM_COPY_HOOKS = ("__reduce__", "__reduce_ex__", "__getstate__", "__setstate__", "__copy__", "__deepcopy__", "__slots__")


def _is_plain_dataclass(kind: type) -> bool:
    if "__dataclass_fields__" not in kind.__dict__:
        return False
    return not any(hook in klass.__dict__ for klass in kind.__mro__[:-1] for hook in _CUSTOM_COPY_HOOKS)


def _plan_dataclass(value: Any, kind: Any, budget: list[int]) -> tuple[Reader, int]:
    """A dataclass instance: a fresh instance over a copied ``__dict__``, as copy.copy makes.

    ``kind`` is a dataclass type; it is Any because ``__dataclass_params__`` is
    not an attribute that ``type`` declares.
    """
    reader, size = _plan_dict(value.__dict__, budget)
    size += sys.getsizeof(value)
    frozen = kind.__dataclass_params__.frozen
    if reader is dict.copy and frozen:
        return None, size  # immutable all the way down

    def copy_instance(source: Any) -> Any:
        clone = object.__new__(kind)
        object.__setattr__(clone, "__dict__", reader(source.__dict__))
        return clone

    return copy_instance, size


def _plan_dict(value: dict, budget: list[int]) -> tuple[Copier, int]:
    size = sys.getsizeof(value)
    nested: list[tuple[Any, Copier]] = []
    getsizeof, leaves = sys.getsizeof, IMMUTABLE_LEAVES
    for key, item in value.items():
        # Leaves are checked inline: a call per key and per scalar was most of the cost.
        if type(key) in leaves:
            size += getsizeof(key)
        else:
            key_reader, key_size = _plan(key, budget)
            if key_reader is not None:
                raise NotPlannable("mutable dict key")
            size += key_size
        if type(item) in leaves:
            size += getsizeof(item)
            continue
        reader, item_size = _plan(item, budget)
        size += item_size
        if reader is not None:
            nested.append((key, reader))
    if not nested:
        return dict.copy, size
    return _shared(("dict", *nested), lambda: _dict_copier(tuple(nested))), size


def _dict_copier(nested: tuple[tuple[Any, Copier], ...]) -> Copier:
    """A copy of a dict whose listed keys hold mutable values, each copied by its own copier.

    Compiled once per shape into straight-line code (``r[k0] = s[k0][:]``
    ...): a loop over ``(key, copier)`` pairs with a call per nested value
    was most of a record's copy, and a record page copies thirty records per
    L1 hit. Only names go into the source; keys and copiers are bound as
    constants of the function, so no cached data is ever compiled.
    """
    names: dict[str, Any] = {}
    lines = ["def copy_dict(s):", "    r = s.copy()"]
    for index, (key, reader) in enumerate(nested):
        names[f"k{index}"] = key
        lines.append(f"    r[k{index}] = {_copy_expression(index, reader, names)}")
    lines.append("    return r")
    exec("\n".join(lines), names)  # noqa: S102 - source made of fixed templates and indices only
    return names["copy_dict"]


def _copy_expression(index: int, reader: Copier, names: dict[str, Any]) -> str:
    """The expression copying ``s[k<index>]``: C-level copies inline, any other copier called."""
    if reader is list.copy:
        return f"s[k{index}][:]"
    if reader is dict.copy or reader is set.copy:
        return f"s[k{index}].copy()"
    names[f"c{index}"] = reader
    return f"c{index}(s[k{index}])"


def _plan_items(value: list | tuple, budget: list[int]) -> tuple[list[Reader], int]:
    """Readers of a sequence's items and the sequence's size."""
    size = sys.getsizeof(value)
    readers: list[Reader] = []
    getsizeof, leaves = sys.getsizeof, IMMUTABLE_LEAVES
    for item in value:
        if type(item) in leaves:
            size += getsizeof(item)
            readers.append(None)
            continue
        reader, item_size = _plan(item, budget)
        size += item_size
        readers.append(reader)
    return readers, size


def _plan_list(value: list, budget: list[int]) -> tuple[Reader, int]:
    readers, size = _plan_items(value, budget)
    if not any(readers):
        return list.copy, size
    first = readers[0]
    if first is not None and all(reader is first for reader in readers):
        # The common API payload: a list of records of one shape.
        return _shared(("list of", first), lambda: _list_of(first)), size
    return (lambda source: [item if reader is None else reader(item) for reader, item in zip(readers, source)]), size


def _list_of(copier: Copier) -> Copier:
    """A copy of a list whose items all copy with ``copier``, built in C by ``map``."""
    return lambda source: list(map(copier, source))


def _plan_tuple(value: tuple, budget: list[int]) -> tuple[Reader, int]:
    readers, size = _plan_items(value, budget)
    if not any(readers):
        return None, size
    return (lambda source: tuple(item if reader is None else reader(item) for reader, item in zip(readers, source))), size
